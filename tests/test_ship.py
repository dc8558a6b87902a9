"""`python -m training ship`: a real stage 1 -> stage 2 run becomes the three shipped files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import write_synthetic_pairs
from training_helpers import store_args_as_before_train_config, train_tiny

from model.checkpoint import load_weights, read_checkpoint
from training.__main__ import main
from training.average import average_models
from training.errors import TrainingError
from training.onnx_metadata import read_metadata
from training.runs import read_val_log
from training.ship import select_checkpoint


@pytest.fixture(scope="module")
def stage2_run(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    stage1, stage2 = root / "stage1", root / "stage2"
    train_tiny("stage1", synthetic_data, stage1, "--steps", "4", "--val-every", "2")
    stage2_flags = ["--stage1", str(stage1 / "best.pt"), "--steps", "4", "--val-every", "2"]
    train_tiny("stage2", synthetic_data, stage2, *stage2_flags)
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
    best = read_checkpoint(stage2_run / "best.pt")
    assert weights["step"] == best["step"] and weights["metrics"] == best["metrics"]
    assert "optimizer" not in weights  # lean: no training state in the shipped file

    record = json.loads((shipped / "training-config.json").read_text())
    assert record["architecture"] == model.config.to_dict()
    assert record["stage2"]["steps_done"] == 4 and record["stage2"]["selected_step"] == best["step"]
    assert record["stage2"]["args"]["stage1"].endswith("best.pt")
    assert record["stage1"]["steps_done"] == 4 and record["stage1"]["checkpoint"] == "best.pt"
    stage1_last = read_checkpoint(stage2_run.parent / "stage1" / "last.pt")
    assert record["stage1"]["wall_seconds"] == round(stage1_last["elapsed_s"], 1)
    assert "val_psnr" in record["stage1"]["selected_val"]

    meta = read_metadata(shipped / "frlie.onnx")
    assert meta["model_version"] == "test-1"
    assert json.loads(meta["validation_metrics"]) == pytest.approx(best["metrics"])
    session = ort.InferenceSession(str(shipped / "frlie.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 40, 56), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(session.run(None, {"image": x})[0] - expected).max() < 1e-4


def test_ship_refuses_to_replace_weights_without_the_required_gain(
    stage2_run: Path, shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(shipped / "frlie.pt", tmp_path / "frlie.pt")
    before = (tmp_path / "frlie.pt").read_bytes()
    assert _ship(stage2_run, tmp_path) == 1
    assert "does not beat the shipped" in capsys.readouterr().err
    assert (tmp_path / "frlie.pt").read_bytes() == before  # nothing was touched
    # --force replaces them; --checkpoint last ships the end of the schedule with its val.csv metrics.
    assert _ship(stage2_run, tmp_path, "--force", "--checkpoint", "last") == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ship-")]  # staging cleaned up
    _, weights = load_weights(tmp_path / "frlie.pt")
    final = read_val_log(stage2_run)[-1]
    assert weights["step"] == final["step"] == 4
    assert weights["metrics"] == {"val_psnr": final["psnr"], "val_ssim": final["ssim"]}
    record = json.loads((tmp_path / "training-config.json").read_text())
    assert record["stage2"]["selected_step"] == 4


def test_ship_without_a_validated_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(TrainingError, match=r"best\.pt not found"):
        select_checkpoint(tmp_path / "nothing", "best")
    assert _ship(tmp_path / "nothing", tmp_path / "dest") == 1
    assert "best.pt not found" in capsys.readouterr().err


def test_ship_reads_the_record_of_a_namespace_era_run(stage2_run: Path, shipped: Path, tmp_path: Path) -> None:
    """Runs written before TrainConfig stored vars(argparse.Namespace) (Paths, the command's function):
    their training record ships exactly as that of a current run."""
    run_dir = tmp_path / "stage2"
    shutil.copytree(stage2_run, run_dir)
    store_args_as_before_train_config(run_dir / "last.pt")
    assert _ship(run_dir, tmp_path / "dest") == 0
    record = json.loads((tmp_path / "dest" / "training-config.json").read_text())
    assert record["stage2"]["args"] == json.loads((shipped / "training-config.json").read_text())["stage2"]["args"]


def test_average_of_checkpoints_is_validated_and_ships(stage2_run: Path, synthetic_data: Path, tmp_path: Path) -> None:
    assert main(["average", "--run", str(stage2_run), "--data", str(synthetic_data), "--threads", "1"]) == 0
    averaged, payload = load_weights(stage2_run / "averaged.pt")
    best, best_payload = load_weights(stage2_run / "best.pt")
    last, last_payload = load_weights(stage2_run / "last.pt")
    assert payload["averaged_from"] == [
        {"file": "best.pt", "step": best_payload["step"]},
        {"file": "last.pt", "step": last_payload["step"]},
    ]
    assert set(payload["metrics"]) == {"val_psnr", "val_ssim"} and payload["metrics"]["val_psnr"] > 0
    for name, tensor in averaged.state_dict().items():
        if tensor.is_floating_point():
            expected = (best.state_dict()[name] + last.state_dict()[name]) / 2
            assert torch.allclose(tensor, expected, atol=1e-7), name
    # The frozen encoder is shared by both checkpoints, so averaging leaves it exactly as it was.
    for name, tensor in averaged.encoder.state_dict().items():
        assert torch.equal(tensor, best.encoder.state_dict()[name]), name

    assert _ship(stage2_run, tmp_path, "--checkpoint", "averaged") == 0
    record = json.loads((tmp_path / "training-config.json").read_text())
    assert record["stage2"]["averaged_from"] == payload["averaged_from"]
    assert record["stage2"]["selected_val"] == pytest.approx(payload["metrics"])


def test_average_needs_two_checkpoints_of_the_same_network(
    stage2_run: Path, synthetic_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(TrainingError, match="at least two"):
        average_models([stage2_run / "best.pt"])
    assert main(["average", "--run", str(stage2_run), "--data", str(synthetic_data), "--checkpoints", "best.pt"]) == 1
    assert "at least two" in capsys.readouterr().err


def test_ship_with_data_writes_gated_int8_and_fp16_files_and_without_removes_stale_ones(
    stage2_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    write_synthetic_pairs(data / "train", 10, seed=3)
    write_synthetic_pairs(data / "val", 2, seed=4)
    dest = tmp_path / "weights"
    # The shipped recipe calibrates on 48 training images: too few is a clear error, nothing shipped.
    assert _ship(stage2_run, dest, "--data", str(data)) == 1
    assert "cannot make the int8 file" in capsys.readouterr().err and not (dest / "frlie.onnx").exists()
    write_synthetic_pairs(data / "train", 52, size=(256, 256), seed=3)
    assert _ship(stage2_run, dest, "--data", str(data)) == 0
    assert sorted(p.name for p in dest.iterdir()) == [
        "frlie-fp16.onnx",
        "frlie-int8.onnx",
        "frlie.onnx",
        "frlie.pt",
        "training-config.json",
    ]
    # The enhancement policy was calibrated on train into every file, the same record in each.
    policy = read_metadata(dest / "frlie.onnx")["policy"]
    assert "train" in json.loads(policy)["calibration"]["data"]
    for precision in ("int8", "fp16"):
        meta = read_metadata(dest / f"frlie-{precision}.onnx")
        assert meta["policy"] == policy
        record = json.loads(meta["quantization"])
        assert meta["precision"] == precision and meta["model_version"] == "test-1"
        assert record["quality_gate"] in ("passed", "failed")
        gate = record["gate"]
        # Quality only: speed belongs to the host that serves (service.precision races the files).
        assert gate["precision"] == precision and gate["val_pairs"] == 2 and "speed" not in gate
        assert gate["passed"] == (record["quality_gate"] == "passed")
        # Both uploads, PNG (the top level) and JPEG q90, must be within the limits.
        assert gate["jpeg"]["upload"] == "JPEG q90"
        assert gate["passed"] == all(
            upload["psnr_drop_db"] <= 0.1
            and upload["ssim_drop"] <= 0.005
            and upload["worst_image"]["psnr_drop_db"] <= 0.1
            for upload in (gate, gate["jpeg"])
        )
    # New weights without --data: the siblings of the old ones must not stay beside them.
    assert _ship(stage2_run, dest, "--force") == 0
    assert not (dest / "frlie-int8.onnx").exists() and not (dest / "frlie-fp16.onnx").exists()
