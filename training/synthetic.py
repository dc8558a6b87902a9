"""Synthetic LOL-layout pairs: smooth random scenes and dark, noisy, red-cast versions of them.

For what needs the data layout but not real photos: the test suite's tiny runs and the GPU check's
timed training steps (bench.gpu_check), whose speed does not depend on what the pixels show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_synthetic_pairs(root: Path, count: int, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """``count`` pairs of ``size`` (height, width) as ROOT/low/N.png and ROOT/high/N.png; returns ROOT."""
    rng = np.random.default_rng(seed)
    height, width = size
    for folder in ("low", "high"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        coarse = rng.uniform(0, 255, size=(max(1, height // 8), max(1, width // 8), 3)).astype(np.uint8)
        high = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
        low = high * np.array([0.25, 0.15, 0.15]) + rng.normal(0, 3, size=high.shape)
        Image.fromarray(high.clip(0, 255).astype(np.uint8)).save(root / "high" / f"{index}.png")
        Image.fromarray(low.clip(0, 255).astype(np.uint8)).save(root / "low" / f"{index}.png")
    return root
