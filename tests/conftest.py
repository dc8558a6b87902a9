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


def write_synthetic_pairs(root: Path, count: int, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """Smooth random 'scenes' (high) and dark, noisy, red-cast versions of them (low), as PNGs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    height, width = size
    for folder in ("low", "high"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        coarse = rng.uniform(0, 255, size=(height // 8, width // 8, 3)).astype(np.uint8)
        high = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
        low = high * np.array([0.25, 0.15, 0.15]) + rng.normal(0, 3, size=high.shape)
        Image.fromarray(high.clip(0, 255).astype(np.uint8)).save(root / "high" / f"{index}.png")
        Image.fromarray(low.clip(0, 255).astype(np.uint8)).save(root / "low" / f"{index}.png")
    return root


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LOL-layout data root (train: 8 pairs, val: 2 pairs) that needs no real data."""
    root = tmp_path_factory.mktemp("synthetic-pairs")
    write_synthetic_pairs(root / "train", 8, seed=1)
    write_synthetic_pairs(root / "val", 2, seed=2)
    return root
