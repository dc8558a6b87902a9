"""The input normalisation of the 2.2 / 2.3 training recipes (``--exposure-*``): uploads brighter than
the training lows are darkened before the network, by the digital gain read from their noise and then
by their mean exposure. The shipped model was trained under it; the service decides with its own
calibrated policy (service.policy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.exposure import MAX_DIGITAL_GAIN, MIN_SCENE_EXPOSURE, estimate_exposure, noise_ratio


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
