"""How bright an upload is, how much it was brightened after capture, and how much to darken it
before the network sees it.

The network learned from LOL-style captures: dark photos (mean luma around 0.02-0.2) with the
sensor noise of a dark capture, and it brightens whatever it gets by roughly the gain those lows
needed. An upload that was brightened after capture (by the camera's processing or by hand) is
brighter than its scene was, and the network would blow it out. Two readings undo that:

* **Digital gain, from noise.** Shot noise has a variance proportional to the signal, so in a
  native capture the noise sigma over sqrt(signal) is about constant; brightening by g multiplies
  sigma by g and the signal by g, so that ratio grows by sqrt(g). ``noise_ratio`` measures it on the
  flattest blocks of the image (texture only adds to the estimate), and
  ``(ratio / noise_reference) ** 2`` is the gain the upload looks to have had since capture (at
  least 1). Dividing it out gives the **scene exposure**: how bright the capture itself was.
* **Mean exposure.** An upload whose scene exposure is still above ``reference`` (a well-exposed
  photo, or one whose noise was smoothed away) is darkened by ``(reference / scene) ** power``.

The upload itself (not the darkened copy) is what the strength blend mixes with, so ``strength=0``
still returns it unchanged; ``auto`` strength (service.strength) uses the noise reading too: an
upload with a dark capture's noise is brought up to a brighter target than a clean photo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ExposureReading:
    """What ``ExposureNormalisation.read`` found in one upload."""

    exposure: float  # mean luma of the upload, 0-1
    digital_gain: float  # >= 1: how much brighter the upload looks than its capture, from its noise
    gain: float  # (0, 1]: what the upload is multiplied by before the network
    # (noise ratio / reference) ** 2, unclamped: about 1 or more where the upload has the noise of a
    # dark capture, well below 1 for a clean photo (or a denoised one); 0 where no noise was read.
    noisiness: float = 0.0


@dataclass(frozen=True)
class ExposureNormalisation:
    """Undo the digital gain read from the noise (``noise_reference``: the noise ratio of a native
    LOL-style capture; 0 turns it off), then darken scenes brighter than ``reference`` (mean luma)
    by ``(reference / scene exposure) ** power`` (``reference`` 0 turns that off)."""

    reference: float
    power: float
    noise_reference: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.reference < 1.0:
            raise ValueError(f"exposure reference must be in [0, 1), got {self.reference}")
        if not 0.0 <= self.power <= 1.0:
            raise ValueError(f"exposure power must be in [0, 1], got {self.power}")
        if self.noise_reference < 0.0:
            raise ValueError(f"noise reference must be >= 0, got {self.noise_reference}")

    @property
    def active(self) -> bool:
        """False when both readings are off: every gain is 1."""
        return self.reference > 0.0 or self.noise_reference > 0.0

    @staticmethod
    def digital_gain_for(exposure: float, noisiness: float) -> float:
        """The brightening since capture that a ``noisiness`` (``noisiness_for``) implies, in
        [1, ``MAX_DIGITAL_GAIN``], never taking the scene below ``MIN_SCENE_EXPOSURE``."""
        if exposure <= MIN_SCENE_EXPOSURE:
            return 1.0
        return float(min(max(noisiness, 1.0), MAX_DIGITAL_GAIN, exposure / MIN_SCENE_EXPOSURE))

    def noisiness_for(self, ratio: float | None) -> float:
        """``(ratio / noise_reference) ** 2``: the gain a native capture would need to be this noisy
        (0 when the noise reading is off or there was none)."""
        if self.noise_reference <= 0.0 or ratio is None:
            return 0.0
        return float((ratio / self.noise_reference) ** 2)

    def gain_for(self, exposure: float, digital_gain: float = 1.0) -> float:
        """The factor (0, 1] the upload is multiplied by before the network; 1 for dark native captures."""
        scene = exposure / digital_gain
        darken = 1.0 if self.reference <= 0.0 or scene <= self.reference else (self.reference / scene) ** self.power
        return float(darken / digital_gain)

    def read(self, image: np.ndarray) -> ExposureReading:
        """Measure an H x W x 3 upload (uint8, or float in [0, 1]) and decide its gain."""
        exposure = estimate_exposure(image)
        ratio = noise_ratio(image) if self.noise_reference > 0.0 else None
        noisiness = self.noisiness_for(ratio)
        digital_gain = self.digital_gain_for(exposure, noisiness)
        return ExposureReading(exposure, digital_gain, self.gain_for(exposure, digital_gain), noisiness)
