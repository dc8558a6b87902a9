"""Helpers shared by the training-command tests: a tiny, fast network configuration and its runs."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from model.checkpoint import load_weights, read_checkpoint, save_weights
from training.__main__ import main
from training.train import run

# Width 8, one FR block, 32 px crops: seconds per run, same code paths as the real model.
TINY = ["--width", "8", "--fr-blocks", "1", "--batch-size", "4", "--crop", "32", "--quiet", "--threads", "1"]


def train_tiny(stage: str, data: Path, out: Path, *extra: str) -> None:
    """Run `python -m training STAGE` on the tiny configuration; it must succeed."""
    assert main([stage, "--data", str(data), "--out", str(out), *TINY, *extra]) == 0


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def store_args_as_before_train_config(last: Path) -> dict[str, Any]:
    """Rewrite the run checkpoint ``last`` as runs before ``TrainConfig`` wrote it: ``args`` was
    ``vars()`` of the argparse namespace, with ``Path`` values and the command's function under
    ``func``. Returns the arguments the file held (plain values)."""
    payload = read_checkpoint(last)
    record: dict[str, Any] = payload.pop("args")
    old_args = {
        key: Path(value) if key in ("data", "out", "stage1", "init") and value else value
        for key, value in record.items()
    }
    model, _ = load_weights(last)
    extra = {key: value for key, value in payload.items() if key not in ("config", "model")}
    save_weights(model, last, **extra, args={**old_args, "func": run})
    assert read_checkpoint(last)["args"]["func"] is run
    return record
