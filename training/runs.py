"""The run folder: the files a training run writes into ``--out`` and what reads them back.

One run folder holds ``last.pt`` (everything needed to resume, with the run's arguments),
``best.pt`` (the best validated weights), ``train.csv`` and ``val.csv`` (appended logs) and, after
``python -m training average``, ``averaged.pt``. Training writes it; ``ship``, ``average`` and
``curves`` read it.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

LAST, BEST, AVERAGED = "last.pt", "best.pt", "averaged.pt"

TRAIN_LOG, VAL_LOG = "train.csv", "val.csv"
# What `ship --checkpoint` chooses from.
CHECKPOINT_FILES = {"best": BEST, "last": LAST, "averaged": AVERAGED}


def snapshot_name(step: int) -> str:
    """The file ``--keep-every`` keeps for one step's weights."""
    return f"step-{step}.pt"


def append_row(run_dir: Path, name: str, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV log ``run_dir/name``, writing the header first when the file is new."""
    path = run_dir / name
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_val_log(run_dir: Path) -> list[dict[str, Any]]:
    """The rows a run appended to ``val.csv`` (step, psnr, ssim, best), typed and in step order."""
    with (run_dir / VAL_LOG).open() as handle:
        rows = [
            {"step": int(r["step"]), "psnr": float(r["psnr"]), "ssim": float(r["ssim"]), "best": int(r["best"])}
            for r in csv.DictReader(handle)
        ]
    return sorted(rows, key=lambda row: row["step"])


def run_arguments(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The arguments a run stored in its ``last.pt``, as plain JSON-ready values.

    Current runs store ``TrainConfig.as_record()``; runs written before it stored ``vars()`` of the
    argparse namespace, paths as ``Path`` and the command's function under ``func``, which is dropped.
    """
    stored = checkpoint.get("args") or {}
    if isinstance(stored, argparse.Namespace):
        stored = vars(stored)
    return {key: str(value) if isinstance(value, Path) else value for key, value in stored.items() if key != "func"}
