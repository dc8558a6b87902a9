"""How bright an upload is and how noisy for its brightness: the measurements the enhancement
policy (service.policy) and the training recipes' input normalisation (training.normalisation)
decide with.

* **Exposure**: mean luma, the gray level the eye would see, on a regular subsample.
* **Noise ratio**: shot noise has a variance proportional to the signal, so in a native capture the
  noise sigma over sqrt(signal) is about constant; brightening by g multiplies sigma by g and the
  signal by g, so that ratio grows by sqrt(g). ``noise_ratio`` measures it on the flattest blocks of
  the image (texture only adds to the estimate). JPEG erases part of the noise, so the policy keeps
  separate calibrations for lossless and lossy uploads.
"""

from __future__ import annotations

import math

import numpy as np

# ITU-R BT.601 luma weights: the exposure estimate is the mean gray level the eye would see.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
EXPOSURE_SAMPLE_STEP = 4  # every 4th row and column: the mean of a large photo barely changes

# Noise measurement (Immerkaer's Laplacian-difference estimator, per block, on luma in gray levels).
NOISE_BLOCK = 16  # pixels per block side
NOISE_MIN_LEVEL = 2.0  # gray levels: darker blocks are mostly rounding to zero, not noise
NOISE_CLIPPED_LEVEL = 250  # a block with any channel this bright may be clipped, which hides noise
NOISE_PERCENTILE = 10.0  # over usable blocks: edges and texture only raise a block's estimate
NOISE_MIN_BLOCKS = 10  # fewer usable blocks than this: no reading (digital gain 1)
NOISE_MAX_BLOCKS = 8192  # larger photos are measured on an even grid of this many blocks at most
MAX_DIGITAL_GAIN = 16.0  # beyond this the noise is not from brightening a capture
MIN_SCENE_EXPOSURE = 0.01  # the darkest LOL-style lows: noise never makes the scene darker than this
# Immerkaer: sigma = sqrt(pi / 2) / 6 * mean |image (*) [[1,-2,1],[-2,4,-2],[1,-2,1]]|.
_IMMERKAER_SCALE = math.sqrt(math.pi / 2.0) / 6.0


def exposure_sample(image: np.ndarray) -> np.ndarray:
    """The regular subsample of an H x W x 3 image (uint8, or float in [0, 1]) that exposure is measured
    on, as float32 in [0, 1]; training keeps these to measure augmented whole images cheaply."""
    sample = image[::EXPOSURE_SAMPLE_STEP, ::EXPOSURE_SAMPLE_STEP].astype(np.float32)
    if image.dtype == np.uint8:
        sample /= np.float32(255.0)
    return sample


def mean_luma(sample: np.ndarray) -> float:
    """Mean luma in [0, 1] of an ``exposure_sample``."""
    return float(np.clip(sample @ LUMA_WEIGHTS, 0.0, 1.0).mean())


def estimate_exposure(image: np.ndarray) -> float:
    """Mean luma in [0, 1] of an H x W x 3 image (uint8, or float in [0, 1]), from a regular subsample."""
    return mean_luma(exposure_sample(image))


def _block_starts(length: int) -> np.ndarray:
    """First inner pixel of each whole block along one axis (one pixel of margin for the 3x3 filter)."""
    return np.arange(1, length - NOISE_BLOCK, NOISE_BLOCK)


def noise_ratio(image: np.ndarray) -> float | None:
    """Noise sigma over sqrt(signal), both in 8-bit gray levels, of an H x W x 3 image (uint8, or float
    in [0, 1]): the ``NOISE_PERCENTILE``-th percentile over blocks that are neither near black nor
    clipped. None when fewer than ``NOISE_MIN_BLOCKS`` blocks are usable (tiny or flat images)."""
    rows, cols = _block_starts(image.shape[0]), _block_starts(image.shape[1])
    thin = math.ceil(math.sqrt(rows.size * cols.size / NOISE_MAX_BLOCKS)) if rows.size and cols.size else 1
    rows, cols = rows[::thin], cols[::thin]
    if rows.size * cols.size < NOISE_MIN_BLOCKS:
        return None
    offsets = np.arange(-1, NOISE_BLOCK + 1)
    # (block rows, block cols, B + 2, B + 2, 3): each block with its one-pixel margin.
    patches = image[(rows[:, None] + offsets)[:, None, :, None], (cols[:, None] + offsets)[None, :, None, :]]
    scale = np.float32(255.0 if image.dtype != np.uint8 else 1.0)
    luma = (patches.astype(np.float32) @ LUMA_WEIGHTS) * scale
    laplacian = (
        luma[..., :-2, :-2]
        + luma[..., :-2, 2:]
        + luma[..., 2:, :-2]
        + luma[..., 2:, 2:]
        - 2 * (luma[..., :-2, 1:-1] + luma[..., 2:, 1:-1] + luma[..., 1:-1, :-2] + luma[..., 1:-1, 2:])
        + 4 * luma[..., 1:-1, 1:-1]
    )
    sigma = _IMMERKAER_SCALE * np.abs(laplacian).mean(axis=(-2, -1))
    level = luma[..., 1:-1, 1:-1].mean(axis=(-2, -1))
    peak = patches[:, :, 1:-1, 1:-1].max(axis=(-3, -2, -1)).astype(np.float32) * scale
    usable = (level >= NOISE_MIN_LEVEL) & (peak < NOISE_CLIPPED_LEVEL)
    if int(usable.sum()) < NOISE_MIN_BLOCKS:
        return None
    return float(np.percentile(sigma[usable] / np.sqrt(level[usable]), NOISE_PERCENTILE))
