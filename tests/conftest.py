"""Shared fixtures. Real data comes from $FRLIE_DATA (CI: ../shared/data/lol-pairs); absent -> skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
