"""ONNX export: contract (names, dynamic shapes, opset, one file), metadata and parity with PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from model.checkpoint import save_weights
from model.network import FRLIE, FRLIEConfig
from training.__main__ import main
from training.export import FP32_TOLERANCE, export_onnx
from training.onnx_metadata import read_metadata


@pytest.fixture(scope="module")
def tiny_model() -> FRLIE:
    torch.manual_seed(0)
    return FRLIE(FRLIEConfig(width=8, fr_blocks=1)).eval()


@pytest.fixture(scope="module")
def exported(tiny_model: FRLIE, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    report = export_onnx(tiny_model, path, metadata={"model_version": "t1", "validation_metrics": {"psnr": 1.5}})
    return path, report


def test_export_is_one_self_contained_file_with_the_contract(exported: tuple[Path, dict]) -> None:
    path, _ = exported
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no external .data file
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("image", "enhanced")
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[1].dim_value == 3 and all(d.dim_param for d in (dims[0], dims[2], dims[3]))


def test_metadata_carries_version_metrics_multiple_and_receptive_radius(
    exported: tuple[Path, dict], tiny_model: FRLIE
) -> None:
    meta = read_metadata(exported[0])
    assert meta["model_version"] == "t1"
    assert json.loads(meta["validation_metrics"]) == {"psnr": 1.5}
    assert meta["size_multiple"] == "4" and meta["precision"] == "fp32"
    assert int(meta["receptive_radius"]) == tiny_model.config.receptive_radius
    assert json.loads(meta["architecture"])["fr_blocks"] == 1


def test_self_check_reports_parity_within_tolerance(exported: tuple[Path, dict]) -> None:
    report = exported[1]
    assert len(report["shapes"]) >= 3 and report["max_abs_diff"] <= FP32_TOLERANCE


@pytest.mark.parametrize("shape", [(1, 3, 20, 20), (3, 3, 36, 52), (1, 3, 124, 68)])
def test_onnx_runtime_matches_pytorch_on_new_shapes(exported: tuple[Path, dict], tiny_model: FRLIE, shape) -> None:
    session = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    (got,) = session.run(["enhanced"], {"image": x})
    with torch.no_grad():
        expected = tiny_model(torch.from_numpy(x)).numpy()
    assert got.shape == shape
    assert np.abs(got - expected).max() <= FP32_TOLERANCE
    assert got.min() >= 0.0 and got.max() <= 1.0


def test_export_command_writes_fp32_and_fp16(tiny_model: FRLIE, tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "best.pt"
    save_weights(tiny_model, checkpoint, stage="stage2", step=12, metrics={"val_psnr": 20.0})
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m-fp16.onnx"), "--fp16"]) == 0
    printed = capsys.readouterr().out
    assert "PSNR vs fp32" in printed
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["model_version"] == "stage2-step12" and json.loads(meta["validation_metrics"])["val_psnr"] == 20.0
    assert read_metadata(tmp_path / "m-fp16.onnx")["precision"] == "fp16"
    # fp16 weights: the file is roughly half the size, and inputs/outputs stay float32.
    assert (tmp_path / "m-fp16.onnx").stat().st_size < 0.7 * (tmp_path / "m.onnx").stat().st_size
    session = ort.InferenceSession(str(tmp_path / "m-fp16.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
