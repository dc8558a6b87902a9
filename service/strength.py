"""How much of the model's effect a request gets: a fixed strength, or one chosen from the photo.

The network is trained to turn a dark, noisy capture into a well-exposed photo, and it brightens
whatever it gets by about the gain such captures need. A number from 0 to 1 blends the upload (0)
with the model output (1) per pixel: ``result = upload + strength * (model - upload)``. Strength 0
never runs the model.

``auto`` aims at a brightness: the strength that brings the upload's mean luma up to a target, read
off the model output's own mean luma (the blend is linear in it), and no more. So a moderately dark
photo comes back normally exposed instead of blown out, a photo already as bright as the target is
left alone (at the default floor of 0, without running the model), and a brighter copy of a photo
never comes back darker than a dimmer one. An upload with the noise of a dark capture
(``noisiness``, see service.exposure), which is what the network was trained for, gets a somewhat
brighter target than a clean photo.

Blending mixes the upload's noise back in. So when a noisy upload would get mostly model anyway (a
strength of at least ``match_from``, predicted on a thumbnail), ``auto`` darkens the network's input
instead, until the model output itself is about as bright as the target (``matched_gain``): the
answer is then almost all model, at the same brightness. One full-size model run either way.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.exposure import ExposureReading, estimate_exposure

AUTO: Literal["auto"] = "auto"
Strength = Literal["auto"] | float

BLEND_ROWS = 256  # rows blended per step, so a 24 MP blend needs no full-size float copy
THUMBNAIL_SIDE = 256  # the longest side of the copy ``auto`` predicts the model's brightness on
MATCH_STEPS = 2  # thumbnail runs per matched gain: the output's brightness is nearly linear in the gain


@dataclass(frozen=True)
class AutoStrength:
    """``auto``: the strength that lifts an upload's mean luma to ``target`` (``noisy_target`` for
    uploads at least ``noisy`` noisy), at most 1 and never below ``floor``; noisy uploads it would
    give at least ``match_from`` get a matched input gain instead (``matched_gain``)."""

    target: float
    noisy_target: float
    noisy: float
    floor: float
    match_from: float = 1.0  # predicted strength from which a noisy upload's gain is matched (1: never)

    def __post_init__(self) -> None:
        if not 0.0 <= self.target <= self.noisy_target <= 1.0:
            raise ValueError(
                f"auto strength needs 0 <= target <= noisy target <= 1, got {self.target}, {self.noisy_target}"
            )
        if self.noisy < 0.0:
            raise ValueError(f"auto strength noisiness threshold must be >= 0, got {self.noisy}")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"auto strength floor must be in [0, 1], got {self.floor}")
        if not 0.0 <= self.match_from <= 1.0:
            raise ValueError(f"auto strength match threshold must be in [0, 1], got {self.match_from}")

    def target_for(self, reading: ExposureReading) -> float:
        """The mean luma an upload is brought up to: higher for one with a dark capture's noise."""
        return self.noisy_target if reading.noisiness >= self.noisy else self.target

    def strength_for(self, reading: ExposureReading, output_exposure: float | None = None) -> float:
        """The strength for an upload read as ``reading`` whose full-strength model output has mean luma
        ``output_exposure``. Without it (before the model has run), an upper bound: 1 below the target."""
        exposure, target = reading.exposure, self.target_for(reading)
        if exposure >= target:
            return self.floor
        if output_exposure is None:
            return 1.0
        if output_exposure <= exposure:  # the model does not brighten this one: leave it
            return self.floor
        return max(self.floor, min(1.0, (target - exposure) / (output_exposure - exposure)))

    def may_match(self, reading: ExposureReading) -> bool:
        """Whether ``matched_gain`` can differ from the reading's gain: only for noisy uploads."""
        return reading.noisiness >= self.noisy and self.match_from < 1.0

    def should_match(self, reading: ExposureReading, output_exposure: float) -> bool:
        """Whether an upload whose model output (at the reading's gain) has mean luma ``output_exposure``
        gets a matched gain: noisy, and one the blend would give at least ``match_from``."""
        return (
            self.may_match(reading)
            and output_exposure > self.target_for(reading)
            and self.strength_for(reading, output_exposure) >= self.match_from
        )


async def matched_gain(
    auto: AutoStrength,
    reading: ExposureReading,
    upload: np.ndarray,
    enhance: Callable[[np.ndarray, float], Awaitable[np.ndarray]],
) -> float:
    """The gain the network's input gets under ``auto``: the reading's, or for a noisy upload the blend
    would give mostly model, the one whose model output reaches the target. ``enhance(image, gain)``
    runs the model on ``image`` times ``gain``; it only ever gets the upload's thumbnail."""
    gain = reading.gain
    if not auto.may_match(reading):
        return gain  # no thumbnail at all
    thumbnail = await asyncio.to_thread(exposure_thumbnail, upload)
    for step in range(MATCH_STEPS):
        output_exposure = estimate_exposure(await enhance(thumbnail, gain))
        if step == 0 and not auto.should_match(reading, output_exposure):
            break
        # Aiming past the target (the final blend would bring it back) lost 0.1 dB on val x2 / x4.
        gain *= min(1.0, auto.target_for(reading) / max(output_exposure, 1e-6))
    return gain


def exposure_thumbnail(image: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """``image`` (H x W x 3, uint8 or float) shrunk by a whole factor (block means) to a longest side
    of at most ``side``: enough to predict the brightness of the model's output cheaply."""
    factor = max(1, math.ceil(max(image.shape[:2]) / side))
    if factor == 1:
        return image
    height, width = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = image[:height, :width].reshape(height // factor, factor, width // factor, factor, 3)
    small: np.ndarray = blocks.mean(axis=(1, 3), dtype=np.float32)
    return np.rint(small).astype(np.uint8) if image.dtype == np.uint8 else small


def resolve_strength(
    requested: Strength, reading: ExposureReading, auto: AutoStrength, output_exposure: float | None = None
) -> float:
    """The strength in [0, 1] to apply to an upload read as ``reading``: the requested number, or
    ``auto``'s choice (an upper bound while ``output_exposure`` is unknown)."""
    if requested == AUTO:
        return auto.strength_for(reading, output_exposure)
    value = float(requested)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"strength must be 'auto' or a number from 0 to 1, got {requested!r}")
    return value


def apply_strength(
    enhanced: np.ndarray, upload: np.ndarray, requested: Strength, reading: ExposureReading, auto: AutoStrength
) -> float:
    """Blend the full-strength model output ``enhanced`` with ``upload`` in place at the requested
    strength (``auto``: chosen from ``enhanced``'s own brightness) and return the strength applied."""
    output_exposure = estimate_exposure(enhanced) if requested == AUTO else None
    applied = resolve_strength(requested, reading, auto, output_exposure)
    blend_into(enhanced, upload, applied)
    return applied


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
