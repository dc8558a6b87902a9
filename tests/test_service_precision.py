"""FRLIE_PRECISION: which file the service runs (fp32, or its int8 sibling on CPUs when it passed its
gate), what it reports, and exact tiling with the int8 file. Real quantization of the tiny model."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
from service_helpers import TINY_MODEL_VERSION, dark_image, export_tiny_model, reference_enhance

from model import contract
from service.engine import Engine, ModelFileError
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.settings import Settings
from training import int8_gate, quantize

CPU = ["CPUExecutionProvider"]
# The tiny model on 48 x 64 synthetic pairs: a calibration of about a second.
TEST_RECIPE = quantize.Recipe(images=6, exposures=("low", "high"))


def _with_verdict(int8_file: Path, passed: bool) -> None:
    int8_gate.record_verdict(int8_file, {"passed": passed, "note": "set by the test"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, synthetic_data: Path) -> Path:
    """tiny.onnx and tiny-int8.onnx side by side, as `ship` leaves them."""
    folder = tmp_path_factory.mktemp("precision")
    fp32 = folder / "tiny.onnx"
    shutil.copy(export_tiny_model(tmp_path_factory.getbasetemp()), fp32)
    quantize.quantize_int8(
        fp32, contract.int8_path(fp32), calibration_root=synthetic_data, recipe=TEST_RECIPE, check_images=0
    )
    _with_verdict(contract.int8_path(fp32), passed=True)
    return folder


def _engine(model: Path, precision: str, **settings: object) -> Engine:
    return Engine(Settings(model_path=model, providers=CPU, precision=precision, **settings))


def test_int8_path_is_the_sibling_file() -> None:
    assert contract.int8_path(Path("/w/frlie.onnx")) == Path("/w/frlie-int8.onnx")


def test_each_precision_runs_the_file_it_names(model_dir: Path) -> None:
    fp32, int8 = model_dir / "tiny.onnx", model_dir / "tiny-int8.onnx"
    for precision, expected in (("fp32", fp32), ("int8", int8), ("auto", int8)):
        engine = _engine(fp32, precision)
        described = engine.describe()
        assert engine.model_file == expected and described["model_file"] == expected.name, precision
        assert described["precision"] == ("fp32" if expected == fp32 else "int8")
        if expected == int8:
            assert engine.model_version == f"{TINY_MODEL_VERSION} [int8]"
        else:
            assert engine.model_version == TINY_MODEL_VERSION


def test_auto_keeps_fp32_when_the_int8_file_failed_its_gate_or_is_missing(model_dir: Path, tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    failed.mkdir()
    shutil.copy(model_dir / "tiny.onnx", failed / "tiny.onnx")
    shutil.copy(model_dir / "tiny-int8.onnx", failed / "tiny-int8.onnx")
    _with_verdict(failed / "tiny-int8.onnx", passed=False)
    assert _engine(failed / "tiny.onnx", "auto").model_file.name == "tiny.onnx"
    # Asked for explicitly, a failed file still runs: the operator chose it.
    assert _engine(failed / "tiny.onnx", "int8").model_file.name == "tiny-int8.onnx"

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(model_dir / "tiny.onnx", alone / "tiny.onnx")
    assert _engine(alone / "tiny.onnx", "auto").model_file.name == "tiny.onnx"
    with pytest.raises(ModelFileError, match="FRLIE_PRECISION=int8"):
        _engine(alone / "tiny.onnx", "int8")


def test_int8_output_is_close_to_fp32_and_differs_from_the_input(model_dir: Path) -> None:
    image = dark_image(120, 160, 3)
    fp32 = reference_enhance(model_dir / "tiny.onnx", image, gain=1.0)
    int8 = reference_enhance(model_dir / "tiny-int8.onnx", image, gain=1.0)
    difference = np.abs(fp32.astype(np.int16) - int8.astype(np.int16))
    assert 0 < difference.mean() < 8, difference.mean()
    assert np.abs(int8.astype(np.int16) - image.astype(np.int16)).mean() > 8


async def _enhance(engine: Engine, image: np.ndarray) -> np.ndarray:
    pipeline = Pipeline(engine, Settings(model_path=engine.model_file, providers=CPU), Metrics())
    try:
        return (await pipeline.enhance_pixels(image)).pixels
    finally:
        await pipeline.close()


@pytest.mark.timeout(180)
def test_tiled_int8_output_equals_the_whole_image_output(model_dir: Path) -> None:
    """Static quantization has fixed scales, so windows with full halos reproduce the whole image."""
    for tile_size, (height, width, seed) in ((32, (203, 317, 1)), (64, (150, 401, 2))):
        engine = _engine(model_dir / "tiny.onnx", "int8", tile_size=tile_size, intra_op_threads=2)
        assert len(engine.plan(height, width).tiles) > 4
        image = dark_image(height, width, seed)
        tiled = asyncio.run(_enhance(engine, image))
        np.testing.assert_array_equal(tiled, reference_enhance(model_dir / "tiny-int8.onnx", image, gain=1.0, passes=1))
