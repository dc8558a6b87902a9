"""Helpers shared by the training-command tests: a tiny, fast network configuration and its runs."""

from __future__ import annotations

import csv
from pathlib import Path

from training.__main__ import main

# Width 8, one FR block, 32 px crops: seconds per run, same code paths as the real model.
TINY = ["--width", "8", "--fr-blocks", "1", "--batch-size", "4", "--crop", "32", "--quiet", "--threads", "1"]


def train_tiny(stage: str, data: Path, out: Path, *extra: str) -> None:
    """Run `python -m training STAGE` on the tiny configuration; it must succeed."""
    assert main([stage, "--data", str(data), "--out", str(out), *TINY, *extra]) == 0


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))
