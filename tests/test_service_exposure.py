"""The exposure and noise measurements (service.exposure), on synthetic shot-noise captures, and the
training recipes' input normalisation built on them (training.normalisation). What the service does
with the measurements is the calibrated policy: tests/test_service_policy.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from service.exposure import MAX_DIGITAL_GAIN, MIN_SCENE_EXPOSURE, estimate_exposure, noise_ratio
from training.normalisation import ExposureNormalisation

pytestmark = pytest.mark.timeout(180)


def _lifted(image: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(np.rint(image.astype(np.float32) * gain), 0, 255).astype(np.uint8)


# --- the rule --------------------------------------------------------------------------------


def test_gain_is_one_for_dark_uploads_and_follows_the_power_law_above_the_reference() -> None:
    rule = ExposureNormalisation(reference=0.05, power=0.9)
    assert rule.gain_for(0.0) == rule.gain_for(0.03) == rule.gain_for(0.05) == 1.0
    assert rule.gain_for(0.2) == pytest.approx(0.25**0.9)
    gains = [rule.gain_for(exposure) for exposure in (0.06, 0.1, 0.2, 0.4, 0.8)]
    assert all(later < earlier for earlier, later in itertools.pairwise(gains)), gains
    # The darkened exposure still rises with the upload's: brighter scenes stay brighter.
    darkened = [rule.gain_for(e) * e for e in (0.06, 0.1, 0.2, 0.4, 0.8)]
    assert all(later > earlier for earlier, later in itertools.pairwise(darkened)), darkened
    # power 1 maps every brighter upload onto the reference; reference 0 switches it off.
    assert ExposureNormalisation(0.05, 1.0).gain_for(0.4) * 0.4 == pytest.approx(0.05)
    assert ExposureNormalisation(0.0, 0.9).gain_for(0.9) == 1.0


@pytest.mark.parametrize(("reference", "power"), [(-0.1, 0.9), (1.0, 0.9), (0.05, 1.5), (0.05, -1.0)])
def test_out_of_range_rules_are_refused(reference: float, power: float) -> None:
    with pytest.raises(ValueError):
        ExposureNormalisation(reference, power)
    with pytest.raises(ValueError):
        ExposureNormalisation(0.1, 1.0, -0.1)


def test_the_digital_gain_is_divided_out_before_the_mean_rule_judges_the_scene() -> None:
    rule = ExposureNormalisation(reference=0.15, power=1.0, noise_reference=0.1)

    # A ratio twice the reference means a 4x brightening; below the reference means none.
    def read(exposure: float, ratio: float | None) -> float:
        return rule.digital_gain_for(exposure, rule.noisiness_for(ratio))

    assert read(0.4, 0.2) == pytest.approx(4.0)
    assert read(0.4, 0.05) == read(0.4, None) == 1.0
    assert read(0.9, 10.0) == MAX_DIGITAL_GAIN
    assert read(0.04, 0.3) * MIN_SCENE_EXPOSURE == pytest.approx(0.04)  # never below the floor
    # A 4x-brightened dark scene (0.1 -> 0.4) is only undone; a bright scene is darkened further.
    assert rule.gain_for(0.4, 4.0) == pytest.approx(0.25)
    assert rule.gain_for(1.2 * 4 * 0.15, 4.0) == pytest.approx(0.25 / 1.2)
    off = ExposureNormalisation(0.15, 1.0, 0.0)
    assert off.digital_gain_for(0.4, off.noisiness_for(0.2)) == 1.0  # 0: off


def _shot_noise_capture(photons_per_level: float, gain: float = 1.0, seed: int = 0) -> np.ndarray:
    """A dim scene captured with shot noise (variance proportional to the signal, ``1 /
    photons_per_level`` levels^2 per level), then brightened by ``gain`` and rounded to 8 bits."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
    signal = 12.0 + 8.0 * np.sin(xx / 40.0) * np.cos(yy / 30.0)  # gray levels, smooth
    scene = np.stack([signal * tint for tint in (1.0, 0.9, 0.8)], axis=-1)
    captured = rng.poisson(scene * photons_per_level) / photons_per_level
    return np.clip(np.rint(captured * gain), 0, 255).astype(np.uint8)


def test_noise_ratio_reads_how_much_a_shot_noise_capture_was_brightened() -> None:
    native = noise_ratio(_shot_noise_capture(0.5))
    assert native is not None and native > 0
    rule = ExposureNormalisation(reference=0.0, power=1.0, noise_reference=native)
    for gain in (2.0, 4.0):
        brightened = _shot_noise_capture(0.5, gain, seed=1)
        read = rule.digital_gain_for(estimate_exposure(brightened), rule.noisiness_for(noise_ratio(brightened)))
        assert read == pytest.approx(gain, rel=0.2), (gain, read)
    # The same scene with 16x the light (a cleaner capture) reads as native, not darker.
    clean = _shot_noise_capture(8.0, seed=2)
    assert rule.digital_gain_for(estimate_exposure(clean), rule.noisiness_for(noise_ratio(clean))) == 1.0


def test_noise_ratio_has_no_reading_on_tiny_flat_or_clipped_images() -> None:
    assert noise_ratio(np.zeros((12, 12, 3), np.uint8)) is None  # no whole block
    assert noise_ratio(np.zeros((200, 200, 3), np.uint8)) is None  # near black everywhere
    assert noise_ratio(np.full((200, 200, 3), 255, np.uint8)) is None  # clipped everywhere
    flat = noise_ratio(np.full((200, 200, 3), 90, np.uint8))  # flat: no noise at all (float32 rounding aside)
    assert flat is not None and flat < 1e-6
    noisy = _shot_noise_capture(0.5)
    assert noise_ratio(noisy.astype(np.float32) / 255.0) == pytest.approx(noise_ratio(noisy), rel=1e-4)
