"""The training command end to end on synthetic data: stages, freezing, resume, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_weights
from training.__main__ import main
from training.train import state_digest
from training_helpers import TINY, csv_rows, train_tiny

@pytest.fixture(scope="module")
def stage1_run(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stage1")
    train_tiny("stage1", synthetic_data, out, "--steps", "6", "--val-every", "3", "--log-every", "2")
    return out


def test_stage1_writes_checkpoints_and_logs(stage1_run: Path) -> None:
    assert (stage1_run / "last.pt").exists() and (stage1_run / "best.pt").exists()
    val = csv_rows(stage1_run / "val.csv")
    assert [int(r["step"]) for r in val] == [3, 6]
    train = csv_rows(stage1_run / "train.csv")
    assert [int(r["step"]) for r in train] == [2, 4, 6]
    assert all(float(r["loss"]) > 0 for r in train)
    _, best = load_weights(stage1_run / "best.pt")
    assert best["stage"] == "stage1" and best["metrics"]["val_psnr"] == pytest.approx(max(float(r["psnr"]) for r in val), abs=1e-4)


def test_stage2_leaves_encoder_and_decoder_bit_identical(stage1_run: Path, synthetic_data: Path, tmp_path: Path) -> None:
    stage1, _ = load_weights(stage1_run / "last.pt")
    before = state_digest([stage1.encoder, stage1.decoder])
    train_tiny("stage2", synthetic_data, tmp_path, "--stage1", str(stage1_run / "last.pt"), "--steps", "4",
           "--val-every", "0")
    after, payload = load_weights(tmp_path / "last.pt")
    assert payload["stage"] == "stage2"
    # Weights AND BatchNorm running statistics are unchanged...
    assert state_digest([after.encoder, after.decoder]) == before
    for name, tensor in stage1.encoder.state_dict().items():
        assert torch.equal(tensor, after.encoder.state_dict()[name]), name
    # ...while FRNet did learn.
    fresh_frnet = payload["model"]
    assert payload["step"] == 4 and any(k.startswith("frnet.") for k in fresh_frnet)
    assert float(csv_rows(tmp_path / "train.csv")[-1]["feature_l1"]) > 0


def test_stage2_without_stage1_checkpoint_is_a_clear_error(synthetic_data: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--stage1"):
        train_tiny("stage2", synthetic_data, tmp_path, "--steps", "1")


def test_e2e_ablation_trains_everything_without_feature_loss(synthetic_data: Path, tmp_path: Path) -> None:
    train_tiny("e2e", synthetic_data, tmp_path, "--steps", "3", "--val-every", "0", "--log-every", "1")
    rows = csv_rows(tmp_path / "train.csv")
    assert len(rows) == 3 and "feature_l1" not in rows[0] and "ssim" in rows[0]


def test_resume_continues_exactly_where_it_stopped(synthetic_data: Path, tmp_path: Path) -> None:
    """4 steps + resume to 8 gives the same weights, optimizer and schedule as 8 straight steps.

    8 pairs in batches of 4 make 2 steps an epoch, so step 4 is an epoch boundary: the restored RNG
    then reshuffles exactly as the uninterrupted run did (mid-epoch, the rest of an epoch is reshuffled).
    """
    common = ["--val-every", "0", "--lr-schedule", "constant", "--seed", "3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_tiny("e2e", synthetic_data, straight, "--steps", "8", *common)
    train_tiny("e2e", synthetic_data, split, "--steps", "4", *common)
    _, halfway = load_weights(split / "last.pt")
    assert halfway["step"] == 4
    train_tiny("e2e", synthetic_data, split, "--steps", "8", "--resume", *common)
    _, a = load_weights(straight / "last.pt")
    _, b = load_weights(split / "last.pt")
    assert b["step"] == 8
    assert b["scheduler"]["last_epoch"] == a["scheduler"]["last_epoch"] == 8
    assert b["optimizer"]["state"][0]["step"] == a["optimizer"]["state"][0]["step"]
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=1e-6, msg=name)


def test_cosine_schedule_reaches_final_lr(synthetic_data: Path, tmp_path: Path) -> None:
    train_tiny("stage1", synthetic_data, tmp_path, "--steps", "4", "--val-every", "0", "--log-every", "1",
           "--lr-schedule", "cosine", "--lr", "2e-4", "--lr-final", "2e-5")
    lrs = [float(r["lr"]) for r in csv_rows(tmp_path / "train.csv")]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(2e-5)


@pytest.mark.timeout(270)
def test_ddp_with_two_cpu_processes(synthetic_data: Path, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "training", "stage1", "--data", str(synthetic_data), "--out", str(tmp_path),
        *TINY, "--steps", "3", "--val-every", "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    _, payload = load_weights(tmp_path / "last.pt")
    assert payload["step"] == 3 and payload["world_size"] == 2


def test_curves_command_plots_validation_psnr(stage1_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "curves.png"
    assert main(["curves", f"stage1={stage1_run}", "--out", str(out), "--reference", "21.5"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200
    with pytest.raises(SystemExit, match="no val.csv"):
        main(["curves", str(tmp_path), "--out", str(out)])
