"""`python -m training ship`: turn a finished training run into the files that `model/weights/` holds.

Shipping by hand (export, copy the weights, rewrite the training record) is where provenance gets
lost, so this command does all three from the run directories themselves: the fp32 ONNX the service
loads, the lean PyTorch weights it was exported from, and `training-config.json` with every argument,
step count and wall time of both stages. It refuses to replace shipped weights unless the new ones
are better on validation PSNR by `--min-gain-db` (the project keeps weight history small), which
`--force` overrides for a documented reason (e.g. a large SSIM gain). `--checkpoint last` ships the
end of the learning-rate schedule instead of the best-PSNR checkpoint, free of selection on val;
`--checkpoint averaged` ships the weight average written by `python -m training average`.
With `--data` it also writes the int8 and fp16 files with their quality gates (`training.precision_gate`),
regenerated with every release, and calibrates the policy into all three.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from model.checkpoint import load_weights, read_checkpoint, save_weights
from model.contract import (
    BUNDLED_MODEL_PATH,
    ONNX_NAME,
    TRAINING_RECORD_NAME,
    WEIGHTS_DIR,
    WEIGHTS_NAME,
    fp16_path,
    int8_path,
)
from model.network import FRLIE
from training.calibrate import calibrate
from training.errors import TrainingError
from training.export import checkpoint_metadata, export_onnx
from training.precision_gate import build_and_gate, build_fp16_and_gate, describe
from training.runs import CHECKPOINT_FILES, LAST, VAL_LOG, read_val_log, run_arguments

# Shipping writes where the service looks for its default model.
SHIPPED_DIR, CONFIG_NAME = WEIGHTS_DIR, TRAINING_RECORD_NAME
INT8_NAME = int8_path(BUNDLED_MODEL_PATH).name
FP16_NAME = fp16_path(BUNDLED_MODEL_PATH).name


def _run_record(run_dir: Path, selected: dict[str, Any] | None = None) -> dict[str, Any]:
    """Arguments, steps and wall time of one training run, read from its resumable checkpoint."""
    last_path = run_dir / LAST
    if not last_path.exists():
        raise TrainingError(f"{last_path} not found: ship needs the run directory written by training")
    last = read_checkpoint(last_path)
    record: dict[str, Any] = {
        "args": run_arguments(last),
        "steps_done": int(last["step"]),
        "wall_seconds": round(float(last.get("elapsed_s", 0.0)), 1),
    }
    if selected is not None:
        record["selected_step"] = int(selected["step"])
        record["selected_val"] = selected.get("metrics", {})
        if "averaged_from" in selected:
            record["averaged_from"] = selected["averaged_from"]
    return record


def training_record(run_dir: Path, shipped: dict[str, Any], model_config: dict[str, Any]) -> dict[str, Any]:
    """The whole training history of the shipped checkpoint of ``run_dir``: stage 1 too, for stage 2."""
    stage = shipped.get("stage", "stage2")
    record: dict[str, Any] = {"architecture": model_config}
    run = _run_record(run_dir, shipped)
    stage1_path = run["args"].get("stage1")
    if stage == "stage2" and stage1_path:
        stage1_file = Path(stage1_path)
        if not stage1_file.exists():
            raise TrainingError(f"the stage-1 checkpoint this run started from, {stage1_file}, is gone")
        stage1_used = read_checkpoint(stage1_file)
        record["stage1"] = _run_record(stage1_file.parent, stage1_used)
        record["stage1"]["checkpoint"] = stage1_file.name
    init_path = run["args"].get("init")
    if init_path:  # a warm start: keep the history of the weights it started from
        init_file = Path(init_path)
        history = init_file.parent / CONFIG_NAME
        record["warm_start"] = {
            "checkpoint": str(init_file),
            "model_version": read_checkpoint(init_file).get("model_version") if init_file.exists() else None,
            "training": json.loads(history.read_text()) if history.exists() else None,
        }
    record[stage] = run
    return record


def _current_psnr(dest: Path) -> float | None:
    shipped = dest / WEIGHTS_NAME
    if not shipped.exists():
        return None
    return read_checkpoint(shipped).get("metrics", {}).get("val_psnr")


def _final_val(run_dir: Path, step: int) -> dict[str, float]:
    """Validation metrics of ``step`` from the run's val.csv (training validates its last step)."""
    rows = read_val_log(run_dir) if (run_dir / VAL_LOG).exists() else []
    for row in rows:
        if row["step"] == step:
            return {"val_psnr": row["psnr"], "val_ssim": row["ssim"]}
    raise TrainingError(f"step {step} of {run_dir} was never validated: let the run finish, or ship best.pt")


def select_checkpoint(run_dir: Path, which: str) -> tuple[FRLIE, dict[str, Any]]:
    """The model and metadata to ship: 'best' (best val PSNR), 'last' (the end of the schedule) or
    'averaged' (written by `python -m training average`, with its own validation metrics)."""
    path = run_dir / CHECKPOINT_FILES[which]
    if not path.exists():
        raise TrainingError(f"{path} not found: the run has not validated yet")
    model, payload = load_weights(path)
    if which == "last":
        payload = {
            "stage": payload.get("stage"),
            "step": payload["step"],
            "config": payload["config"],
            "metrics": _final_val(run_dir, int(payload["step"])),
        }
    return model, payload


def ship(
    run_dir: Path,
    dest: Path,
    *,
    model_version: str,
    training_data: str,
    min_gain_db: float,
    force: bool,
    which: str = "best",
    data: Path | None = None,
) -> dict[str, Any]:
    """Export and write the shipped files into ``dest``; returns a summary of what was done.

    With ``data`` (a lol-pairs root), the int8 file (calibrated on train/) and the fp16 file are
    made too, each with its quality gate on val/, and the enhancement policy is calibrated on train/
    into all three (about half an hour on 2 CPU cores; ``training.calibrate``); without it, siblings
    of the previous weights are removed, never kept beside new weights.
    """
    model, payload = select_checkpoint(run_dir, which)
    new_psnr = payload.get("metrics", {}).get("val_psnr")
    old_psnr = _current_psnr(dest)
    if old_psnr is not None and not force and (new_psnr is None or new_psnr < old_psnr + min_gain_db):
        raise TrainingError(
            f"not shipping: val PSNR {new_psnr} dB does not beat the shipped {old_psnr:.3f} dB by "
            f"{min_gain_db} dB (use --force, and say why, to replace it anyway)"
        )
    record = training_record(run_dir, payload, model.config.to_dict())
    metadata = checkpoint_metadata(payload, model_version=model_version, training_data=training_data)
    dest.mkdir(parents=True, exist_ok=True)
    # Everything is written next to dest first, then moved in, so a failed export ships nothing.
    with tempfile.TemporaryDirectory(dir=dest, prefix=".ship-") as staging_dir:
        staging = Path(staging_dir)
        report = export_onnx(model, staging / ONNX_NAME, metadata=metadata)
        save_weights(
            model,
            staging / WEIGHTS_NAME,
            stage=payload.get("stage"),
            step=payload.get("step"),
            metrics=payload.get("metrics", {}),
            model_version=model_version,
        )
        (staging / CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n")
        int8 = build_and_gate(staging / ONNX_NAME, data) if data is not None else None
        fp16 = build_fp16_and_gate(staging / ONNX_NAME, data) if data is not None else None
        if data is not None:  # the policy belongs to the weights: fitted on train, stored in every file
            calibrate(staging / ONNX_NAME, data, staging / "calibration.jsonl")
        names = [ONNX_NAME, WEIGHTS_NAME, CONFIG_NAME]
        for sibling, name in ((int8, INT8_NAME), (fp16, FP16_NAME)):
            if sibling is not None:
                names.append(name)
            else:  # siblings of other weights must not sit beside these
                (dest / name).unlink(missing_ok=True)
        for name in names:
            shutil.move(staging / name, dest / name)
    return {
        "step": payload.get("step"),
        "val": payload.get("metrics", {}),
        "previous_val_psnr": old_psnr,
        "onnx_max_abs_diff": report["max_abs_diff"],
        "onnx_mb": (dest / ONNX_NAME).stat().st_size / 1e6,
        "int8": int8,
        "fp16": fp16,
    }


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("ship", help="export a run's best checkpoint into model/weights with its record")
    parser.add_argument("--run", required=True, type=Path, help="training run directory (holds best.pt, last.pt)")
    parser.add_argument(
        "--dest",
        type=Path,
        default=SHIPPED_DIR,
        help="where the shipped files go (default: the service's bundled model folder)",
    )
    parser.add_argument("--model-version", required=True, help="version string stored in the ONNX metadata")
    parser.add_argument("--training-data", default="lol-pairs/train (247 pairs)", help="stored in the metadata")
    parser.add_argument(
        "--min-gain-db", type=float, default=0.2, help="val PSNR gain over the shipped weights needed to replace them"
    )
    parser.add_argument(
        "--checkpoint",
        choices=tuple(CHECKPOINT_FILES),
        default="best",
        help="best.pt (best val PSNR), last.pt (end of the lr schedule, no selection on val) "
        "or averaged.pt (`python -m training average`)",
    )
    parser.add_argument("--force", action="store_true", help="replace the shipped weights without the gain")
    parser.add_argument(
        "--data",
        type=Path,
        help=f"lol-pairs root: also write {INT8_NAME} (calibrated on its train/) and {FP16_NAME}, each gated "
        "on its val/ (without it, siblings of the previous weights are removed; `make ship` passes DATA)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = ship(
        args.run,
        args.dest,
        model_version=args.model_version,
        training_data=args.training_data,
        min_gain_db=args.min_gain_db,
        force=args.force,
        which=args.checkpoint,
        data=args.data,
    )
    val = summary["val"]
    print(
        f"shipped step {summary['step']} to {args.dest}: val PSNR {val.get('val_psnr', float('nan')):.3f} dB, "
        f"SSIM {val.get('val_ssim', float('nan')):.4f} (previous: {summary['previous_val_psnr']}); "
        f"{ONNX_NAME} {summary['onnx_mb']:.1f} MB, max |onnx - torch| {summary['onnx_max_abs_diff']:.1e}"
    )
    for key, name in (("int8", INT8_NAME), ("fp16", FP16_NAME)):
        if summary[key] is not None:
            print(f"{name}: {describe(summary[key])}")
        else:
            print(f"no {name}: pass --data to make and gate it")
    return 0
