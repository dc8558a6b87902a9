"""A physically based low-light camera: what a sensor records of a scene given a fraction of its light.

Used by the non-LOL benchmark (``training.colour_bench``), which darkens well-exposed photos to score
the service on scenes unlike LOL, and by the colour-diverse training pairs (``training.colour_mix``),
which darken normal-light images so the network also sees dark captures without lol-pairs' red cast.
"""

from __future__ import annotations

import numpy as np

FULL_WELL_ELECTRONS = 4000.0  # a linear value of 1.0 fills the well
READ_NOISE_ELECTRONS = 4.0  # Gaussian read noise, electrons (a phone sensor at base ISO)


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 decoding of sRGB values in [0, 1]."""
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 encoding of linear values in [0, 1]."""
    values = np.clip(values, 0.0, 1.0)
    return np.where(values <= 0.0031308, values * 12.92, 1.055 * values ** (1 / 2.4) - 0.055)


def capture(
    srgb: np.ndarray,
    divisor: float,
    rng: np.random.Generator,
    *,
    full_well: float = FULL_WELL_ELECTRONS,
    read_noise: float = READ_NOISE_ELECTRONS,
) -> np.ndarray:
    """The scene ``srgb`` (float sRGB in [0, 1], any shape) captured with 1/``divisor`` of its light:
    linear light scaled down, Poisson shot noise on the electrons a ``full_well`` well collects,
    Gaussian read noise, back to sRGB rounded to 8-bit levels (float in [0, 1]). Nothing brightens the
    result: the camera's output is the dark photo."""
    electrons = srgb_to_linear(np.clip(srgb, 0.0, 1.0)) * (full_well / divisor)
    captured = rng.poisson(electrons) + rng.normal(0.0, read_noise, electrons.shape)
    return np.rint(linear_to_srgb(captured / full_well) * 255.0) / 255.0


def darken(rgb: np.ndarray, divisor: float, rng: np.random.Generator) -> np.ndarray:
    """``capture`` of an H x W x 3 uint8 photo at the default sensor, as uint8."""
    return np.rint(capture(rgb.astype(np.float64) / 255.0, divisor, rng) * 255.0).astype(np.uint8)
