"""The enhancement policy: what the service does with one upload around the network.

One place turns (decoded upload, request) into a ``Plan``: how bright the upload is and how much it
looks brightened since capture (its reading), what the network's input is multiplied by (gain), how
much of the network's answer is kept (strength), how many self-ensemble passes run, and the finish
(a black-and-white upload comes back gray). The HTTP route, the folder CLI, ``training evaluate`` and
the benchmarks all go through it, so what is measured is what is served.

Its constants belong to the weights, not to the operator: ``python -m training calibrate`` fits them
on the train split and writes them into the model file's metadata (``model.contract.POLICY``), with
the data and the rule that chose them. A model file without them runs as the plain network.

The decision, for ``strength=auto``:

* **Digital gain, from noise.** Shot noise grows with the square root of the signal, so an upload
  that was brightened after capture (by the camera or by hand) is noisier, for its brightness, than
  a native dark capture. Per upload kind (lossless, or JPEG/WebP whose codec erases part of the
  noise) the calibration records the noise ratios of native train lows and of their x2 / x4
  brightenings; the reading interpolates between them, above a floor that native captures stay under,
  and only for uploads brighter than a gate (the noisiest native captures are also the darkest).
* **Exposure reference.** A scene (the upload with its digital gain divided out) brighter than the
  darkest the network handles well is darkened to it.
* **Probe.** Before any darkening, the network answers a thumbnail of the upload as it is; only an
  answer brighter than most answers to native train lows confirms it (the noise of a few native
  captures is unlike any train low's, and some lows above the reference are already answered at
  their reference's brightness).
* **Well exposed.** A scene at least as bright as typical well-exposed photos (the median train
  normal-light image) comes back unchanged, without running the model. A clean scene between the
  exposure reference and that line (a dim but normally lit photo) gets the network's answer blended
  with the upload until it is no brighter than that line: the network, which learned to brighten
  dark captures, would otherwise blow it out. Darker uploads get the network's full answer.

A number from 0 to 1 as the strength blends the upload (0) with the model output (1) per pixel.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from typing import Any

import numpy as np

from model.contract import POLICY
from service.exposure import MAX_DIGITAL_GAIN, MIN_SCENE_EXPOSURE, estimate_exposure, noise_ratio
from service.imageio import make_gray
from service.strength import AUTO, Strength, blend_into

LOSSLESS = "lossless"  # PNG, TIFF, BMP...: the capture's noise arrives intact
LOSSY = "lossy"  # JPEG, WebP: compression erases part of the noise
UPLOAD_KINDS = (LOSSLESS, LOSSY)
NEVER_UNCHANGED = 2.0  # an ``unchanged_from`` no mean luma reaches


@dataclass(frozen=True)
class NoiseGainReading:
    """How much brighter than its capture an upload of one kind looks, from its noise ratio
    (``service.exposure.noise_ratio``): 1 up to ``floor``, then log-log interpolation through
    ``knots`` (noise ratio, digital gain), continued past the last knot along its last segment.
    Uploads darker than ``min_exposure`` (mean luma) are never read as brightened: the noisiest
    native captures are also among the darkest, and a brightened copy is brighter than its capture."""

    floor: float
    knots: tuple[tuple[float, float], ...] = ()
    min_exposure: float = 0.0

    def __post_init__(self) -> None:
        ratios = [self.floor, *(ratio for ratio, _ in self.knots)]
        gains = [1.0, *(gain for _, gain in self.knots)]
        if any(b <= a for a, b in pairwise(ratios)) or any(b <= a for a, b in pairwise(gains)):
            raise ValueError(f"noise knots must rise from the floor {self.floor} with gains above 1: {self.knots}")

    def digital_gain(self, ratio: float | None, exposure: float = 1.0) -> float:
        if ratio is None or not self.knots or ratio <= self.floor or exposure < self.min_exposure:
            return 1.0
        log_ratios = [math.log(self.floor), *(math.log(r) for r, _ in self.knots)]
        log_gains = [0.0, *(math.log(g) for _, g in self.knots)]
        x = math.log(ratio)
        # The segment that holds x, or the last one (continued past the last knot).
        segment = next((i for i in range(1, len(log_ratios)) if x <= log_ratios[i]), len(log_ratios) - 1)
        (x0, x1), (y0, y1) = log_ratios[segment - 1 : segment + 1], log_gains[segment - 1 : segment + 1]
        log_gain = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        return float(min(max(math.exp(log_gain), 1.0), MAX_DIGITAL_GAIN))


@dataclass(frozen=True)
class PolicyConstants:
    """Everything the policy decides with; ``calibration`` says where the numbers came from."""

    readings: dict[str, NoiseGainReading]  # per upload kind
    exposure_reference: float  # scene mean luma above which the input is darkened to it (>= 1: off)
    unchanged_from: float  # scene mean luma from which auto returns the upload unchanged (``NEVER_UNCHANGED``: never)
    calibration: dict[str, Any] = field(default_factory=dict)
    # An upload read as brightened keeps that reading only if the network's answer to it as it is
    # (on a thumbnail) is at least this bright (mean luma; 0: no check, no thumbnail run).
    probe_luma: float = 0.0
    # Clean scenes brighter than the exposure reference, and brighter than this, have their answer
    # capped at ``unchanged_from`` (``NEVER_UNCHANGED``: never).
    cap_from: float = NEVER_UNCHANGED

    @classmethod
    def uncalibrated(cls) -> PolicyConstants:
        """A model file without a policy: the plain network on every upload, at gain 1."""
        plain = NoiseGainReading(floor=0.0)  # no knots: never reads a digital gain
        return cls(dict.fromkeys(UPLOAD_KINDS, plain), 1.0, NEVER_UNCHANGED, {"rule": "none (plain network)"})

    def to_json(self) -> str:
        data = asdict(self)
        data["readings"] = {
            kind: {"floor": r.floor, "knots": [list(k) for k in r.knots], "min_exposure": r.min_exposure}
            for kind, r in self.readings.items()
        }
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> PolicyConstants:
        """The record in a model file's metadata (``model.contract.POLICY``); without one, the plain
        network. Raises ValueError for a record that cannot be read."""
        text = metadata.get(POLICY)
        if text is None:
            return cls.uncalibrated()
        try:
            return cls.from_json(text)
        except (KeyError, TypeError) as error:
            raise ValueError(f"unreadable {POLICY} record: {error}") from error

    @classmethod
    def from_json(cls, text: str) -> PolicyConstants:
        data = json.loads(text)
        readings = {
            kind: NoiseGainReading(
                float(r["floor"]), tuple((float(a), float(b)) for a, b in r["knots"]), float(r.get("min_exposure", 0.0))
            )
            for kind, r in data["readings"].items()
        }
        missing = set(UPLOAD_KINDS) - set(readings)
        if missing:
            raise ValueError(f"policy metadata lacks the reading for {sorted(missing)}")
        return cls(
            readings,
            float(data["exposure_reference"]),
            float(data["unchanged_from"]),
            data.get("calibration", {}),
            float(data.get("probe_luma", 0.0)),
            float(data.get("cap_from", NEVER_UNCHANGED)),
        )


@dataclass(frozen=True)
class Reading:
    """What the policy sees in one upload."""

    exposure: float  # mean luma, 0-1
    noise_ratio: float | None  # service.exposure.noise_ratio; None where too few blocks were usable
    digital_gain: float  # >= 1: how much brighter the upload looks than its capture

    @property
    def scene_exposure(self) -> float:
        return self.exposure / self.digital_gain


def policy_gain(
    constants: PolicyConstants, kind: str, exposure: float, ratio: float | None, probe_luma: float | None = None
) -> tuple[float, float]:
    """(digital gain, input gain) for an upload of ``kind`` with this mean luma and noise ratio, and
    (``probe_luma``) the mean luma of the network's answer to its thumbnail as it is: an upload whose
    answer is darker than ``constants.probe_luma`` is not darkened at all (neither read as brightened
    nor brought down to the exposure reference)."""
    if probe_luma is not None and probe_luma < constants.probe_luma:
        return 1.0, 1.0
    # Never read the scene as darker than the darkest LOL-style capture.
    digital = min(constants.readings[kind].digital_gain(ratio, exposure), max(exposure / MIN_SCENE_EXPOSURE, 1.0))
    scene = exposure / digital
    darken = constants.exposure_reference / scene if scene > constants.exposure_reference else 1.0
    return digital, float(darken / digital)


@dataclass(frozen=True)
class Plan:
    """What happens to one upload."""

    reading: Reading
    gain: float  # what the upload is multiplied by before the network (1: not darkened)
    strength: float  # the most applied: 0 is the upload unchanged (no model run), 1 the model output
    passes: int  # self-ensemble passes (service.ensemble); 0 when the model does not run
    gray: bool  # a black-and-white upload: the answer is made gray again
    # A clean scene brighter than the exposure reference: the answer is blended back with the upload
    # until its mean luma is at most this (None: no cap).
    brightness_cap: float | None = None
    # The reading is provisional until the network's answer to a thumbnail confirms it (``settle``).
    needs_probe: bool = False

    @property
    def runs_model(self) -> bool:
        return self.strength > 0.0


class Policy:
    """The calibrated decision of one model file."""

    def __init__(self, constants: PolicyConstants) -> None:
        self.constants = constants

    def plan(self, upload: np.ndarray, *, lossy: bool, grayscale: bool, strength: Strength, passes: int) -> Plan:
        """The plan for an H x W x 3 upload (uint8, or float in [0, 1]); ``passes`` is what the host's
        self-ensemble budget gives its size. Under ``auto``, an upload the policy would darken needs a
        thumbnail run before its plan is final (``needs_probe``, then ``settle``)."""
        if strength != AUTO and not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength must be 'auto' or a number from 0 to 1, got {strength!r}")
        kind = LOSSY if lossy else LOSSLESS
        exposure, ratio = estimate_exposure(upload), noise_ratio(upload)
        plan = self._decide(kind, exposure, ratio, None, grayscale, strength, passes)
        probe = strength == AUTO and plan.runs_model and plan.gain < 1.0 and self.constants.probe_luma > 0.0
        return replace(plan, needs_probe=probe)

    def settle(self, plan: Plan, probe_luma: float, *, lossy: bool, strength: Strength) -> Plan:
        """The final plan once the network's answer to the upload's thumbnail (at gain 1) is known to
        have mean luma ``probe_luma``."""
        kind = LOSSY if lossy else LOSSLESS
        reading = plan.reading
        return self._decide(kind, reading.exposure, reading.noise_ratio, probe_luma, plan.gray, strength, plan.passes)

    def _decide(
        self,
        kind: str,
        exposure: float,
        ratio: float | None,
        probe_luma: float | None,
        grayscale: bool,
        strength: Strength,
        passes: int,
    ) -> Plan:
        constants = self.constants
        digital, gain = policy_gain(constants, kind, exposure, ratio, probe_luma)
        reading = Reading(exposure, ratio, digital)
        if strength == AUTO:
            applied = 0.0 if reading.scene_exposure >= constants.unchanged_from else 1.0
        else:
            applied = float(strength)
        if applied <= 0.0:
            return Plan(reading, 1.0, 0.0, 0, grayscale)
        capped = (
            strength == AUTO and digital == 1.0 and exposure > max(constants.exposure_reference, constants.cap_from)
        )
        return Plan(reading, gain, applied, passes, grayscale, constants.unchanged_from if capped else None)

    @staticmethod
    def finish(plan: Plan, enhanced: np.ndarray, upload: np.ndarray) -> float:
        """Turn the full-strength model output ``enhanced`` into the answer, in place; returns the
        strength applied (below the plan's where the brightness cap blends the upload back in)."""
        strength = plan.strength
        if plan.brightness_cap is not None:
            exposure, answer = plan.reading.exposure, estimate_exposure(enhanced)
            if answer > plan.brightness_cap > exposure:  # the blend is linear in mean luma
                strength = min(strength, (plan.brightness_cap - exposure) / (answer - exposure))
        blend_into(enhanced, upload, strength)
        if plan.gray:  # the network would tint a black-and-white photo
            make_gray(enhanced)
        return strength


THUMBNAIL_SIDE = 256  # the longest side of the copy the probe runs the network on


def thumbnail_factor(height: int, width: int, side: int = THUMBNAIL_SIDE) -> int:
    """The whole factor ``thumbnail`` shrinks an image of this size by."""
    return max(1, math.ceil(max(height, width) / side))


def thumbnail(image: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """``image`` (H x W x 3, uint8 or float) shrunk by a whole factor (block means) to a longest side
    of at most ``side``: enough to see how bright the network's answer is, at a small cost."""
    factor = thumbnail_factor(image.shape[0], image.shape[1], side)
    if factor == 1:
        return image
    height, width = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = image[:height, :width].reshape(height // factor, factor, width // factor, factor, 3)
    small: np.ndarray = blocks.mean(axis=(1, 3), dtype=np.float32)
    return np.rint(small).astype(np.uint8) if image.dtype == np.uint8 else small
