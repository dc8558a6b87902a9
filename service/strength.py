"""How much of the model's effect a request gets: a fixed strength, or one chosen from the photo's exposure.

The network is trained to turn a dark photo into a well-exposed one. A photo that is already
well exposed needs little of that, so ``auto`` gives full strength to dark photos and less to
bright ones, and a number from 0 to 1 blends the upload (0) with the model output (1) per pixel:
``result = upload + strength * (model - upload)``. Strength 0 never runs the model.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import numpy as np

AUTO: Literal["auto"] = "auto"
Strength = Literal["auto"] | float

BLEND_ROWS = 256  # rows blended per step, so a 24 MP blend needs no full-size float copy


@dataclass(frozen=True)
class AutoStrength:
    """``auto``: full strength up to exposure ``dark``, falling linearly to ``floor`` at ``bright``.

    Exposure is the mean luma in [0, 1] (see ``service.exposure.estimate_exposure``).
    """

    dark: float
    bright: float
    floor: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.dark < self.bright <= 1.0:
            raise ValueError(f"auto strength needs 0 <= dark < bright <= 1, got {self.dark}, {self.bright}")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"auto strength floor must be in [0, 1], got {self.floor}")

    def strength_for(self, exposure: float) -> float:
        position = min(1.0, max(0.0, (exposure - self.dark) / (self.bright - self.dark)))
        return 1.0 - position * (1.0 - self.floor)


def resolve_strength(requested: Strength, exposure: float, auto: AutoStrength) -> float:
    """The strength in [0, 1] to apply to an upload of ``exposure`` (``estimate_exposure``): the
    requested number, or ``auto``'s choice."""
    if requested == AUTO:
        return auto.strength_for(exposure)
    value = float(requested)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"strength must be 'auto' or a number from 0 to 1, got {requested!r}")
    return value


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
