"""FRLIE_PRECISION: which file the service runs (fp32, or the fastest sibling that passed its gate, by
a start-up race on this host), what it reports, and exact tiling with the int8 file. Real
quantization of the tiny model; the race's decision is tested with injected timings, the race
itself on this machine's CPU, whatever it is."""

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
from service.precision import MIN_SPEEDUP, RACE_BUDGET_S, choose, race
from service.settings import Settings
from training import precision_gate, quantize

CPU = ["CPUExecutionProvider"]
# The tiny model on 48 x 64 synthetic pairs: a calibration of about a second.
TEST_RECIPE = quantize.Recipe(images=6, exposures=("low", "high"))


def _with_verdict(int8_file: Path, passed: bool) -> None:
    precision_gate.record_verdict(int8_file, {"passed": passed, "note": "set by the test"})


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


def test_siblings_sit_beside_the_fp32_file() -> None:
    assert contract.int8_path(Path("/w/frlie.onnx")) == Path("/w/frlie-int8.onnx")
    assert contract.fp16_path(Path("/w/frlie.onnx")) == Path("/w/frlie-fp16.onnx")


def test_each_precision_runs_the_file_it_names(model_dir: Path) -> None:
    fp32, int8 = model_dir / "tiny.onnx", model_dir / "tiny-int8.onnx"
    for precision, expected in (("fp32", fp32), ("int8", int8)):
        engine = _engine(fp32, precision)
        described = engine.describe()
        assert engine.model_file == expected and described["model_file"] == expected.name, precision
        assert described["precision"] == precision
        assert described["precision_choice"]["mode"] == precision == described["precision_choice"]["choice"]
        assert engine.precision_report.race_seconds is None  # named: no race
        expected_version = TINY_MODEL_VERSION if precision == "fp32" else f"{TINY_MODEL_VERSION} [int8]"
        assert engine.model_version == expected_version


def test_auto_races_the_eligible_files_on_this_host_within_its_budget(model_dir: Path) -> None:
    """The real race, on whatever CPU runs the tests: its verdict follows its own timings."""
    engine = _engine(model_dir / "tiny.onnx", "auto")
    report = engine.describe()["precision_choice"]
    assert isinstance(report, dict)
    seconds = {c["precision"]: c["seconds"] for c in report["candidates"] if c["eligible"]}
    assert set(seconds) == {"fp32", "int8"} and all(value > 0 for value in seconds.values())
    assert report["choice"] == choose(seconds).precision == engine.describe()["precision"]
    assert engine.model_file.name == ("tiny-int8.onnx" if report["choice"] == "int8" else "tiny.onnx")
    assert 0 < report["race_seconds"] <= RACE_BUDGET_S and report["race_window"] == [256, 256]
    fp16 = next(c for c in report["candidates"] if c["precision"] == "fp16")
    assert not fp16["eligible"] and "CPUExecutionProvider" in fp16["why"]  # fp16 files are for GPUs


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        ({"fp32": 1.0, "int8": 0.5}, "int8"),  # 2x
        ({"fp32": 1.0, "int8": 1.0 / MIN_SPEEDUP}, "int8"),  # exactly the bar
        ({"fp32": 1.0, "int8": 0.9}, "fp32"),  # 1.11x: not worth a different file
        ({"fp32": 1.0, "int8": 1.7}, "fp32"),  # slower (an AVX2 host without VNNI)
        ({"fp32": 1.0, "int8": 0.6, "fp16": 0.3}, "fp16"),  # the fastest wins
        ({"fp32": 1.0, "int8": 0.5, "fp16": 0.95}, "int8"),
        ({"fp32": 0.5, "int8": 0.5}, "fp32"),  # a tie keeps the reference
        ({"fp32": 1.0}, "fp32"),
    ],
)
def test_the_fastest_eligible_file_wins_only_by_a_clear_margin(seconds: dict[str, float], expected: str) -> None:
    choice = choose(seconds)
    assert choice.precision == expected and choice.reason
    assert choice.speedup == (seconds["fp32"] / seconds[expected] if expected != "fp32" else 1.0)


def test_a_race_without_fp32_is_refused() -> None:
    with pytest.raises(ValueError, match="fp32"):
        choose({"int8": 0.5})


class _FakeClock:
    """Seconds that advance only when a runner 'runs': injected timings."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def runner(self, seconds: list[float]) -> object:
        durations = iter(seconds)

        def run() -> None:
            self.now += next(durations)

        return run


def test_the_race_takes_medians_of_interleaved_rounds_and_stops_within_its_budget() -> None:
    clock = _FakeClock()
    runners = {  # warm-up first (untimed, slow), then rounds
        "fp32": clock.runner([3.0, 1.0, 1.2, 0.9, 1.0, 1.0]),
        "int8": clock.runner([2.0, 0.5, 0.4, 0.6, 0.5, 0.5]),
    }
    seconds, took = race(runners, budget_s=10.0, max_rounds=5, clock=clock)  # type: ignore[arg-type]
    # 5 s of warm-up, then three rounds of ~1.5 s (to 9.6 s): a fourth would end past 10 s, so it never starts.
    assert took == pytest.approx(5.0 + 1.5 + 1.6 + 1.5) and took <= 10.0
    assert seconds == {"fp32": pytest.approx(1.0), "int8": pytest.approx(0.5)}
    # A host too slow for even one round within budget still gets one timed round: a verdict, not a guess.
    slow = _FakeClock()
    seconds, took = race({"fp32": slow.runner([9.0, 9.0]), "int8": slow.runner([9.0, 4.0])}, 4.0, clock=slow)  # type: ignore[arg-type]
    assert seconds == {"fp32": 9.0, "int8": 4.0} and took == 31.0


def test_auto_skips_files_whose_gate_failed_or_that_are_missing(model_dir: Path, tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    failed.mkdir()
    shutil.copy(model_dir / "tiny.onnx", failed / "tiny.onnx")
    shutil.copy(model_dir / "tiny-int8.onnx", failed / "tiny-int8.onnx")
    _with_verdict(failed / "tiny-int8.onnx", passed=False)
    engine = _engine(failed / "tiny.onnx", "auto")
    assert engine.model_file.name == "tiny.onnx" and engine.precision_report.race_seconds is None
    int8 = next(c for c in engine.precision_report.candidates if c.precision == "int8")
    assert not int8.eligible and int8.gate == "failed" and int8.why == "quality gate failed"
    # Asked for explicitly, a failed file still runs: the operator chose it.
    assert _engine(failed / "tiny.onnx", "int8").model_file.name == "tiny-int8.onnx"

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(model_dir / "tiny.onnx", alone / "tiny.onnx")
    assert _engine(alone / "tiny.onnx", "auto").model_file.name == "tiny.onnx"
    for precision in ("int8", "fp16"):
        with pytest.raises(ModelFileError, match=f"FRLIE_PRECISION={precision}"):
            _engine(alone / "tiny.onnx", precision)


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
