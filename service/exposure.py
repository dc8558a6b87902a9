"""How bright an upload is, and how much to darken it before the network sees it.

The network learned from LOL-style lows, whose mean luma sits around 0.02-0.2, and it brightens
whatever it gets by roughly the gain those lows needed. A photo that is only moderately dark (or
was already brightened) would come back blown out. Exposure normalisation scales an upload that is
brighter than ``reference`` down towards it, ``gain = (reference / exposure) ** power``, so the
network always sees the exposure range it was trained on; ``power`` below 1 keeps part of the
upload's own brightness, which carries information about how bright the scene should end up. The
upload itself (not the darkened copy) is what the strength blend mixes with, so ``strength=0``
still returns it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ITU-R BT.601 luma weights: the exposure estimate is the mean gray level the eye would see.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
EXPOSURE_SAMPLE_STEP = 4  # every 4th row and column: the mean of a large photo barely changes


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


@dataclass(frozen=True)
class ExposureNormalisation:
    """Darken uploads brighter than ``reference`` (mean luma) by ``(reference / exposure) ** power``.

    ``reference`` 0 turns normalisation off (every gain is 1); ``power`` 1 maps every brighter upload
    exactly onto ``reference``, 0 leaves it alone.
    """

    reference: float
    power: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.reference < 1.0:
            raise ValueError(f"exposure reference must be in [0, 1), got {self.reference}")
        if not 0.0 <= self.power <= 1.0:
            raise ValueError(f"exposure power must be in [0, 1], got {self.power}")

    def gain_for(self, exposure: float) -> float:
        """The factor (0, 1] the upload is multiplied by before the network; 1 for dark uploads."""
        if self.reference <= 0.0 or exposure <= self.reference:
            return 1.0
        return float((self.reference / exposure) ** self.power)
