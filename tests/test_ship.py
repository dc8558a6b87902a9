"""`python -m training ship`: a real stage 1 -> stage 2 run becomes the three shipped files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model import load_weights
from training.__main__ import main
from training.export import read_metadata

TINY = ["--width", "8", "--fr-blocks", "1", "--batch-size", "4", "--crop", "32", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def stage2_run(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    stage1, stage2 = root / "stage1", root / "stage2"
    assert main(["stage1", "--data", str(synthetic_data), "--out", str(stage1), *TINY,
                 "--steps", "4", "--val-every", "2"]) == 0
    assert main(["stage2", "--data", str(synthetic_data), "--out", str(stage2), *TINY,
                 "--stage1", str(stage1 / "best.pt"), "--steps", "4", "--val-every", "2"]) == 0
    return stage2


def _ship(run: Path, dest: Path, *extra: str) -> int:
    return main(["ship", "--run", str(run), "--dest", str(dest), "--model-version", "test-1", *extra])


@pytest.fixture(scope="module")
def shipped(stage2_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("weights")
    assert _ship(stage2_run, dest) == 0
    return dest


def test_ship_writes_onnx_weights_and_full_training_record(stage2_run: Path, shipped: Path) -> None:
    assert sorted(p.name for p in shipped.iterdir()) == ["frlie.onnx", "frlie.pt", "training-config.json"]

    model, weights = load_weights(shipped / "frlie.pt")
    best = torch.load(stage2_run / "best.pt", weights_only=False)
    assert weights["step"] == best["step"] and weights["metrics"] == best["metrics"]
    assert "optimizer" not in weights  # lean: no training state in the shipped file

    record = json.loads((shipped / "training-config.json").read_text())
    assert record["architecture"] == model.config.to_dict()
    assert record["stage2"]["steps_done"] == 4 and record["stage2"]["selected_step"] == best["step"]
    assert record["stage2"]["args"]["stage1"].endswith("best.pt")
    assert record["stage1"]["steps_done"] == 4 and record["stage1"]["checkpoint"] == "best.pt"
    assert record["stage1"]["wall_seconds"] > 0 and "val_psnr" in record["stage1"]["selected_val"]

    meta = read_metadata(shipped / "frlie.onnx")
    assert meta["model_version"] == "test-1"
    assert json.loads(meta["validation_metrics"]) == pytest.approx(best["metrics"])
    session = ort.InferenceSession(str(shipped / "frlie.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 40, 56), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(session.run(None, {"image": x})[0] - expected).max() < 1e-4


def test_ship_refuses_to_replace_weights_without_the_required_gain(
    stage2_run: Path, shipped: Path, tmp_path: Path
) -> None:
    shutil.copy(shipped / "frlie.pt", tmp_path / "frlie.pt")
    before = (tmp_path / "frlie.pt").read_bytes()
    with pytest.raises(SystemExit, match="does not beat the shipped"):
        _ship(stage2_run, tmp_path)
    assert (tmp_path / "frlie.pt").read_bytes() == before  # nothing was touched
    assert _ship(stage2_run, tmp_path, "--force") == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ship-")]  # staging cleaned up


def test_ship_without_a_validated_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="best.pt not found"):
        _ship(tmp_path / "nothing", tmp_path / "dest")
