"""How much of the model's effect a request gets: ``auto`` (the calibrated policy decides, see
service.policy) or a number from 0 to 1 that blends the upload (0) with the model output (1) per
pixel: ``result = upload + strength * (model - upload)``. Strength 0 never runs the model.
"""

from __future__ import annotations

import argparse
from typing import Literal

import numpy as np

AUTO: Literal["auto"] = "auto"
Strength = Literal["auto"] | float

BLEND_ROWS = 256  # rows blended per step, so a 24 MP blend needs no full-size float copy


def blend_into(enhanced: np.ndarray, original: np.ndarray, strength: float) -> None:
    """``enhanced = original + strength * (enhanced - original)``, in place, rounded for uint8."""
    if strength >= 1.0:
        return
    for top in range(0, enhanced.shape[0], BLEND_ROWS):
        rows = slice(top, top + BLEND_ROWS)
        base = original[rows].astype(np.float32)
        mixed = base + np.float32(strength) * (enhanced[rows].astype(np.float32) - base)
        if enhanced.dtype == np.uint8:
            enhanced[rows] = np.rint(np.clip(mixed, 0.0, 255.0))
        else:
            enhanced[rows] = mixed


def parse_strength(text: str) -> Strength:
    """argparse type for --strength: 'auto' or a number from 0 to 1."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number from 0 to 1, got {text!r}")
    return value
