"""Shared fixtures. Real data comes from $FRLIE_DATA (CI: ../shared/data/lol-pairs); absent -> skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from training.synthetic import write_synthetic_pairs

DATA_ENV = "FRLIE_DATA"


def _data_root() -> Path | None:
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None


@pytest.fixture(scope="session")
def lol_pairs() -> Path:
    """Root of the lol-pairs data set (with train/ and val/), or skip with the reason."""
    root = _data_root()
    if root is None:
        pytest.skip(f"set {DATA_ENV} to the lol-pairs folder (e.g. ../shared/data/lol-pairs) to run this test")
    if not (root / "val" / "low").is_dir():
        pytest.skip(f"{DATA_ENV}={root} has no val/low folder")
    return root


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LOL-layout data root (train: 8 pairs, val: 2 pairs) that needs no real data."""
    root = tmp_path_factory.mktemp("synthetic-pairs")
    write_synthetic_pairs(root / "train", 8, seed=1)
    write_synthetic_pairs(root / "val", 2, seed=2)
    return root
