"""A physically based low-light camera: what a sensor records of a scene given a fraction of its light.

Used by the non-LOL benchmark (``training.colour_bench``), which darkens well-exposed photos to score
the service on scenes unlike LOL, and by the colour-diverse training pairs (``training.colour_mix``),
which darken normal-light images so the network also sees dark captures without lol-pairs' red cast.

A real camera's output is white-balanced: green is the sensor's most sensitive channel, so the raw red
and blue channels are amplified after capture, and their noise is larger than green's at the same
output level, by the square root of the gain. lol-pairs' lows (real captures) show it; a model that
adds the same noise to every channel does not, and a network trained on such captures could tell them
from real ones by their noise alone. So each capture draws its own white-balance gains
(``white_balance_gains``), in ranges that reproduce the lows' per-channel noise (``channel_noise``).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import convolve

FULL_WELL_ELECTRONS = 4000.0  # a linear value of 1.0 fills the well
READ_NOISE_ELECTRONS = 4.0  # Gaussian read noise, electrons (a phone sensor at base ISO)
# White-balance gains of red and blue relative to green, drawn log-uniformly per capture. On the 218
# lol-pairs train lows (PNG) that ``channel_noise`` can read, red / green is 1.10 / 1.43 / 1.83 and
# blue / green 1.15 / 1.52 / 1.93 (5th / 50th / 95th percentiles). A gain g reads about sqrt(g), more in
# a dark blue channel where read noise weighs more; the benchmark's captures (3 draws of every photo at
# / 8 and / 16) read 1.12 / 1.54 / 1.86 and 1.15 / 1.44 / 1.92 with these ranges.
WHITE_BALANCE_RED = (1.2, 3.4)
WHITE_BALANCE_BLUE = (1.15, 2.8)


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 decoding of sRGB values in [0, 1]."""
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 encoding of linear values in [0, 1]."""
    values = np.clip(values, 0.0, 1.0)
    return np.where(values <= 0.0031308, values * 12.92, 1.055 * values ** (1 / 2.4) - 0.055)


def white_balance_gains(rng: np.random.Generator) -> np.ndarray:
    """(red, green, blue) gains of one capture: green 1, red and blue log-uniform in their ranges."""
    low = np.log([WHITE_BALANCE_RED[0], 1.0, WHITE_BALANCE_BLUE[0]])
    high = np.log([WHITE_BALANCE_RED[1], 1.0, WHITE_BALANCE_BLUE[1]])
    gains: np.ndarray = np.exp(rng.uniform(low, high))
    return gains


def capture(
    srgb: np.ndarray,
    divisor: float,
    rng: np.random.Generator,
    *,
    full_well: float = FULL_WELL_ELECTRONS,
    read_noise: float = READ_NOISE_ELECTRONS,
    channel_axis: int = -1,
) -> np.ndarray:
    """The scene ``srgb`` (float sRGB in [0, 1], RGB along ``channel_axis``) captured with 1/``divisor``
    of its light: linear light scaled down and divided by the white-balance gains (what the raw
    channels receive), Poisson shot noise on the electrons a ``full_well`` well collects, Gaussian read
    noise, the gains applied back, then sRGB rounded to 8-bit levels (float in [0, 1]). The scene's
    colours are kept on average; nothing brightens the result: the camera's output is the dark photo."""
    shape = [1] * srgb.ndim
    shape[channel_axis] = 3
    gains = white_balance_gains(rng).reshape(shape)
    electrons = srgb_to_linear(np.clip(srgb, 0.0, 1.0)) / gains * (full_well / divisor)
    captured = (rng.poisson(electrons) + rng.normal(0.0, read_noise, electrons.shape)) * gains
    return np.rint(linear_to_srgb(captured / full_well) * 255.0) / 255.0


def darken(rgb: np.ndarray, divisor: float, rng: np.random.Generator) -> np.ndarray:
    """``capture`` of an H x W x 3 uint8 photo at the default sensor, as uint8."""
    return np.rint(capture(rgb.astype(np.float64) / 255.0, divisor, rng) * 255.0).astype(np.uint8)


# Immerkaer's noise estimator: a Laplacian difference that cancels smooth image content.
_IMMERKAER_KERNEL = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
_IMMERKAER_SCALE = float(np.sqrt(np.pi / 2.0) / 6.0)
NOISE_BLOCK = 8
NOISE_PERCENTILE = 10  # low blocks: flat ones, where the Laplacian sees noise and not texture
NOISE_MIN_BLOCKS = 50  # fewer usable blocks in a channel: no reading


def _blocks(plane: np.ndarray) -> np.ndarray:
    """``plane`` cut to whole ``NOISE_BLOCK`` blocks: (rows, block, cols, block)."""
    rows, cols = plane.shape[0] // NOISE_BLOCK, plane.shape[1] // NOISE_BLOCK
    return plane[: rows * NOISE_BLOCK, : cols * NOISE_BLOCK].reshape(rows, NOISE_BLOCK, cols, NOISE_BLOCK)


def channel_noise(image: np.ndarray) -> tuple[float, float, float] | None:
    """Per channel of an H x W x 3 uint8 photo, its noise relative to what unamplified shot noise gives
    at the same sRGB level: the ``NOISE_PERCENTILE``-th percentile over 8x8 blocks (neither near black
    nor clipped) of Immerkaer's sigma over d(sRGB)/d(linear) x sqrt(linear). Only the ratios between
    channels mean anything: a channel amplified by g after capture reads sqrt(g) times the others.
    None where a channel has fewer than ``NOISE_MIN_BLOCKS`` usable blocks (a nearly black channel)."""
    values = image.astype(np.float64) / 255.0
    readings = []
    for channel in range(3):
        plane = values[..., channel]
        sigma = _IMMERKAER_SCALE * np.abs(convolve(plane, _IMMERKAER_KERNEL, mode="reflect"))
        level, peak, noise = (
            _blocks(plane).mean(axis=(1, 3)),
            _blocks(plane).max(axis=(1, 3)),
            _blocks(sigma).mean(axis=(1, 3)),
        )
        usable = (level > 8 / 255) & (peak < 250 / 255)
        if int(usable.sum()) < NOISE_MIN_BLOCKS:
            return None
        linear = srgb_to_linear(level[usable])
        slope = np.where(linear <= 0.0031308, 12.92, 1.055 / 2.4 * np.maximum(linear, 1e-6) ** (1 / 2.4 - 1))
        readings.append(float(np.percentile(noise[usable] / (slope * np.sqrt(linear)), NOISE_PERCENTILE)))
    red, green, blue = readings
    return red, green, blue
