"""The training command end to end on synthetic data: stages, freezing, resume, DDP."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_helpers import TINY, csv_rows, store_args_as_before_train_config, train_tiny

from model.checkpoint import load_weights, read_checkpoint
from training.__main__ import build_parser, main
from training.config import TrainConfig, config_from_args, preset_names
from training.errors import TrainingError
from training.train import Trainer, state_digest

REPO = Path(__file__).resolve().parents[1]


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
    best_psnr = max(float(r["psnr"]) for r in val)
    assert best["stage"] == "stage1" and best["metrics"]["val_psnr"] == pytest.approx(best_psnr, abs=1e-4)


def test_stage2_leaves_encoder_and_decoder_bit_identical(
    stage1_run: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    stage1, _ = load_weights(stage1_run / "last.pt")
    before = state_digest([stage1.encoder, stage1.decoder])
    train_tiny(
        "stage2",
        synthetic_data,
        tmp_path,
        "--stage1",
        str(stage1_run / "last.pt"),
        "--steps",
        "4",
        "--val-every",
        "0",
        "--keep-every",
        "2",
    )
    after, payload = load_weights(tmp_path / "last.pt")
    assert payload["stage"] == "stage2"
    # --keep-every kept the weights of steps 2 and 4 for good; the end's equal last.pt's.
    assert sorted(path.name for path in tmp_path.glob("step-*.pt")) == ["step-2.pt", "step-4.pt"]
    kept, kept_payload = load_weights(tmp_path / "step-4.pt")
    assert kept_payload["step"] == 4 and state_digest([kept.frnet]) == state_digest([after.frnet])
    # Weights AND BatchNorm running statistics are unchanged...
    assert state_digest([after.encoder, after.decoder]) == before
    for name, tensor in stage1.encoder.state_dict().items():
        assert torch.equal(tensor, after.encoder.state_dict()[name]), name
    # ...while FRNet did learn.
    fresh_frnet = payload["model"]
    assert payload["step"] == 4 and any(k.startswith("frnet.") for k in fresh_frnet)
    assert float(csv_rows(tmp_path / "train.csv")[-1]["feature_l1"]) > 0


def test_stage2_without_stage1_checkpoint_is_a_clear_error(
    synthetic_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = TrainConfig(stage="stage2", data=synthetic_data, out=tmp_path, batch_size=4, crop=32)
    with pytest.raises(TrainingError, match="--stage1"):
        Trainer(config)
    # The command line shows the same message, without a traceback, and fails.
    assert main(["stage2", "--data", str(synthetic_data), "--out", str(tmp_path), *TINY, "--steps", "1"]) == 1
    assert "--stage1" in capsys.readouterr().err


def test_colour_distill_gives_plain_samples_the_teachers_answer(
    stage1_run: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    """--colour-distill: samples the colour mix leaves alone learn the teacher's answer and restored
    features; colour samples keep the normal-light image. A student equal to its teacher therefore has
    nothing to learn from plain samples."""
    train_tiny("stage2", synthetic_data, tmp_path / "teacher", "--stage1", str(stage1_run / "last.pt"), "--steps", "2")
    teacher_path = tmp_path / "teacher" / "last.pt"
    base = {"stage": "stage2", "data": synthetic_data, "out": tmp_path / "student", "batch_size": 4, "crop": 32}
    config = TrainConfig(**base, init=teacher_path, colour_distill=teacher_path, colour_synthetic=0.5, threads=1)
    trainer = Trainer(config)
    low, high, plain = next(iter(trainer.loader))
    assert plain.dtype == torch.bool and low.shape == high.shape
    plain = torch.tensor([True, False, True, False])
    with torch.no_grad():
        output, _, restored, target_features = trainer.forward(low, high)
        target, features = trainer._distilled_targets(low, plain, high, target_features)
    assert torch.equal(target[plain], output[plain]) and torch.equal(target[~plain], high[~plain])
    assert torch.equal(features[plain], restored[plain]) and torch.equal(features[~plain], target_features[~plain])
    with pytest.raises(TrainingError, match="colour mix"):
        Trainer(TrainConfig(**base, init=teacher_path, colour_distill=teacher_path))
    # A network trained end to end has its own encoder and decoder: its features mean nothing here.
    train_tiny("e2e", synthetic_data, tmp_path / "e2e", "--steps", "1", "--val-every", "0")
    other = TrainConfig(**base, init=teacher_path, colour_distill=tmp_path / "e2e" / "last.pt", colour_recast=0.5)
    with pytest.raises(TrainingError, match="another encoder/decoder"):
        Trainer(other)


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
    train_tiny(
        "stage1",
        synthetic_data,
        tmp_path,
        "--steps",
        "4",
        "--val-every",
        "0",
        "--log-every",
        "1",
        "--lr-schedule",
        "cosine",
        "--lr",
        "2e-4",
        "--lr-final",
        "2e-5",
    )
    lrs = [float(r["lr"]) for r in csv_rows(tmp_path / "train.csv")]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(2e-5)


@pytest.mark.timeout(270)
def test_ddp_with_two_cpu_processes(synthetic_data: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "training",
        "stage1",
        "--data",
        str(synthetic_data),
        "--out",
        str(tmp_path),
        *TINY,
        "--steps",
        "3",
        "--val-every",
        "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    _, payload = load_weights(tmp_path / "last.pt")
    assert payload["step"] == 3 and payload["world_size"] == 2


def test_curves_command_plots_validation_psnr(
    stage1_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    out = tmp_path / "curves.png"
    assert main(["curves", f"stage1={stage1_run}", "--out", str(out), "--reference", "21.5"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200
    assert main(["curves", str(tmp_path), "--out", str(out)]) == 1
    assert "no val.csv" in capsys.readouterr().err


# --------------------------------------------------------------------------- configuration and presets


def parse_config(argv: list[str]) -> TrainConfig:
    """The TrainConfig that `python -m training ARGV` trains with."""
    return config_from_args(build_parser().parse_args(argv))


# The Makefile's training commands as they were before presets (DATA=D, RUNS=R, default TRAIN_FLAGS).
FLAGS_BEFORE_PRESETS = {
    "train": [
        "stage1 --data D --out R/stage1 --steps 6000 --lr-schedule step --decay-at 0.7 --val-every 250 "
        "--max-minutes 45 --crop 128 --batch-size 16 --precision bf16 --threads 2 --resume",
        "stage2 --data D --out R/stage2 --stage1 R/stage1/best.pt --steps 8000 --lr-schedule cosine --val-every 250 "
        "--max-minutes 125 --crop 128 --batch-size 16 --precision bf16 --threads 2 --resume",
    ],
    "train-exposure": [
        "stage2 --data D --out R/stage2-exposure --init model/weights/frlie.pt --steps 1400 --max-minutes 100 "
        "--crop 192 --batch-size 6 --lr 1.5e-4 --lr-final 1.5e-5 --lr-schedule cosine --adam-betas 0.9 0.999 "
        "--ema 0.998 --rotate --exposure-identity 0.2 --exposure-gain 0.4 --exposure-max-gain 8 "
        "--exposure-gamma 0.2 --val-exposures --val-every 350 --precision fp32 --threads 2 --resume",
    ],
    "ablation": [
        "e2e --data D --out R/e2e --steps 2400 --lr-schedule cosine --val-every 200 --max-minutes 100 "
        "--crop 128 --batch-size 16 --precision bf16 --threads 2 --resume",
    ],
}


@pytest.mark.parametrize("target", sorted(FLAGS_BEFORE_PRESETS))
def test_makefile_presets_give_the_configs_of_the_old_flag_lists(target: str) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry_run = subprocess.run(
        ["make", "-n", "-C", str(REPO), target, "PY=python", "DATA=D", "RUNS=R"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.replace("\\\n", " ")
    commands = [shlex.split(line)[3:] for line in dry_run.splitlines() if line.startswith("python -m training ")]
    assert all("--preset" in command for command in commands)
    assert [parse_config(command) for command in commands] == [
        parse_config(shlex.split(line)) for line in FLAGS_BEFORE_PRESETS[target]
    ]


def test_the_colour_preset_mixes_recast_and_synthetic_inputs_into_a_warm_start() -> None:
    config = parse_config(["stage2", "--data", "D", "--out", "R", "--preset", "colour-2.5", "--init", "w.pt"])
    assert (config.colour_recast, config.colour_synthetic, config.init) == (0.25, 0.25, Path("w.pt"))
    assert parse_config(["stage2", "--data", "D", "--out", "R", "--colour-recast", "0.1"]).colour_recast == 0.1


def test_flags_override_a_preset_wherever_they_stand() -> None:
    base = ["stage2", "--data", "D", "--out", "R"]
    preset = parse_config([*base, "--preset", "exposure-2.0"])
    assert (preset.batch_size, preset.lr, preset.adam_betas, preset.rotate) == (6, 1.5e-4, (0.9, 0.999), True)
    assert preset.exposure_max_gain == 8.0 and isinstance(preset.exposure_max_gain, float)
    for argv in (["--crop", "64", "--preset", "exposure-2.0"], ["--preset", "exposure-2.0", "--crop", "64"]):
        config = parse_config([*base, *argv])
        assert config.crop == 64 and config.batch_size == 6
    assert parse_config(base) == TrainConfig(stage="stage2", data=Path("D"), out=Path("R"))  # no preset: defaults


def test_presets_are_checked_like_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert {"exposure-2.0", "stage1-1.1", "stage2-1.1", "ablation-e2e"} <= set(preset_names())
    base = ["--data", str(tmp_path), "--out", str(tmp_path / "run")]
    assert main(["stage1", *base, "--preset", "exposure-2.0"]) == 1
    assert "exposure-2.0 is a stage2 recipe, not stage1" in capsys.readouterr().err
    assert main(["stage1", *base, "--preset", "nope"]) == 1
    assert "no preset 'nope'" in capsys.readouterr().err
    custom = tmp_path / "mine.toml"
    custom.write_text("crop = 64\nexposure_gain = 0.5\n")
    assert main(["stage1", *base, "--preset", str(custom)]) == 1
    assert "exposure_gain cannot be set by a stage1 preset" in capsys.readouterr().err
    custom.write_text('precision = "fp64"\n')
    assert main(["stage1", *base, "--preset", str(custom)]) == 1
    assert "argument --precision: invalid choice: 'fp64'" in capsys.readouterr().err
    assert main(["stage1", *base, "--precision", "fp16"]) == 1
    assert "--precision fp16 needs --device cuda" in capsys.readouterr().err


def test_checkpoint_record_keeps_the_keys_of_the_shipped_training_record() -> None:
    """New runs store the same arguments, in the same order, as the runs behind the shipped model."""
    shipped = json.loads((REPO / "model" / "weights" / "training-config.json").read_text())["stage2"]["args"]
    config = parse_config(["stage2", "--data", "D", "--out", "R", "--preset", "exposure-2.0", "--init", "x.pt"])
    record = list(config.as_record())
    # Options added after the shipped run (issue 22's colour mix) come last, just before "stage".
    added = ["colour_recast", "colour_synthetic", "keep_every", "colour_distill"]
    assert record[-len(added) - 1 : -1] == added and config.colour_recast == config.colour_synthetic == 0.0
    assert [key for key in record if key not in added] == list(shipped)
    stage1 = parse_config(["stage1", "--data", "D", "--out", "R"]).as_record()
    assert "stage1" not in stage1 and "exposure_gain" not in stage1 and stage1["command"] == stage1["stage"] == "stage1"
    json.dumps(config.as_record())  # plain values only


def test_checkpoint_of_the_namespace_era_resumes(synthetic_data: Path, tmp_path: Path) -> None:
    """Runs written before TrainConfig stored vars(argparse.Namespace): Paths, 'command' and the
    command's function; they must still resume."""
    train_tiny("e2e", synthetic_data, tmp_path, "--steps", "2", "--val-every", "0")
    record = store_args_as_before_train_config(tmp_path / "last.pt")
    train_tiny("e2e", synthetic_data, tmp_path, "--steps", "3", "--val-every", "0", "--resume")
    resumed = read_checkpoint(tmp_path / "last.pt")
    assert resumed["step"] == 3 and resumed["args"] == {**record, "steps": 3, "resume": True}
