"""Exposure normalisation: uploads brighter than the model's training lows are darkened before it.

The rule (the digital gain read from the noise, then the mean exposure), on synthetic shot-noise
captures and on real pairs; through a real server: the gains the service picks and reports, the
exact model input they imply, the settings that turn it off; with the bundled model on real pairs:
a moderately dark photo no longer comes back much brighter than the same scene shot darker.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from service_helpers import (
    GRACEFUL_EXIT_CODES,
    ServerProcess,
    dark_image,
    decode_image,
    encode_image,
    export_tiny_model,
    reference_enhance,
)

from model.contract import BUNDLED_MODEL_PATH
from service.exposure import (
    MAX_DIGITAL_GAIN,
    MIN_SCENE_EXPOSURE,
    ExposureNormalisation,
    estimate_exposure,
    noise_ratio,
)
from service.settings import Settings
from training.data import list_pairs, load_rgb

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.getbasetemp())


def _server(model_path: Path, log: Path, **settings: object) -> ServerProcess:
    return ServerProcess(model_path, log, tile_size=64, **settings).start()


@pytest.fixture(scope="module")
def default_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = _server(model_path, tmp_path_factory.mktemp("logs") / "exposure.log")
    yield running
    assert running.stop() in GRACEFUL_EXIT_CODES


def _enhance(server: ServerProcess, image: np.ndarray, strength: str = "1") -> httpx.Response:
    response = server.client.post(
        "/enhance", files={"image": ("in.png", encode_image(image, "PNG"))}, data={"strength": strength}
    )
    assert response.status_code == 200, response.text
    return response


def _pixels(response: httpx.Response) -> np.ndarray:
    return np.asarray(decode_image(response.content))


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
def test_out_of_range_settings_are_refused(reference: float, power: float) -> None:
    with pytest.raises(ValueError):
        ExposureNormalisation(reference, power)
    with pytest.raises(ValidationError):
        Settings(exposure_reference=reference, exposure_power=power)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRLIE_EXPOSURE_REFERENCE", "0.08")
    monkeypatch.setenv("FRLIE_EXPOSURE_POWER", "0.5")
    monkeypatch.setenv("FRLIE_EXPOSURE_NOISE_REFERENCE", "0.2")
    assert Settings().exposure_normalisation == ExposureNormalisation(0.08, 0.5, 0.2)


def test_a_negative_noise_reference_is_refused() -> None:
    with pytest.raises(ValueError):
        ExposureNormalisation(0.1, 1.0, -0.1)
    with pytest.raises(ValidationError):
        Settings(exposure_noise_reference=-0.1)


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


def test_val_lows_read_as_native_and_their_brightened_copies_by_their_gain(lol_pairs: Path) -> None:
    """The default noise reference on real captures: the lows mostly read as native (gain ~1) and
    the lows x2 / x4 read about 2x / 4x (the median over val, as each image's texture differs)."""
    rule = Settings().exposure_normalisation
    read: dict[float, list[float]] = {1.0: [], 2.0: [], 4.0: []}
    for pair in list_pairs(lol_pairs / "val"):
        low = load_rgb(pair.low)
        for gain, values in read.items():
            values.append(rule.read(_lifted(low, gain)).digital_gain)
    medians = {gain: float(np.median(values)) for gain, values in read.items()}
    assert medians[1.0] < 1.3, medians
    assert medians[2.0] == pytest.approx(2.0, rel=0.25), medians
    assert medians[4.0] == pytest.approx(4.0, rel=0.25), medians


# --- through the running service ---------------------------------------------------------------


def test_bright_upload_is_darkened_by_the_reported_gain_before_the_model(
    default_server: ServerProcess, model_path: Path
) -> None:
    reading = Settings().exposure_normalisation.read(image := _lifted(dark_image(80, 120, seed=11), 3.0))
    expected_gain = reading.gain  # mean luma ~0.45, noisy: a well-lit photo, or a brightened one
    assert expected_gain < 0.5
    response = _enhance(default_server, image)
    assert float(response.headers["x-exposure-gain"]) == pytest.approx(expected_gain, abs=1e-3)
    assert float(response.headers["x-digital-gain"]) == pytest.approx(reading.digital_gain, abs=0.01)
    np.testing.assert_array_equal(_pixels(response), reference_enhance(model_path, image, gain=expected_gain))


def test_dark_upload_reaches_the_model_unchanged(default_server: ServerProcess, model_path: Path) -> None:
    image = _lifted(dark_image(80, 120, seed=12, noise=0.0), 0.25)  # dim and clean: a native dark capture
    assert estimate_exposure(image) < Settings().exposure_reference
    response = _enhance(default_server, image)
    assert response.headers["x-exposure-gain"] == "1.000" and response.headers["x-digital-gain"] == "1.00"
    np.testing.assert_array_equal(_pixels(response), reference_enhance(model_path, image, gain=1.0))


def test_jpeg_uploads_are_judged_by_the_lossy_mean_rule_alone(default_server: ServerProcess) -> None:
    """JPEG erases the noise the digital gain is read from: the service does not read it and darkens
    by the mean exposure of the decoded pixels with the lossy reference."""
    image = _lifted(dark_image(80, 120, seed=15), 3.0)
    data = encode_image(image, "JPEG", quality=90)
    decoded = np.asarray(decode_image(data).convert("RGB"))
    expected = Settings().lossy_exposure_normalisation.read(decoded)
    response = default_server.client.post("/enhance", files={"image": ("in.jpg", data)}, data={"strength": "1"})
    assert response.status_code == 200, response.text
    assert response.headers["x-digital-gain"] == "1.00"
    assert float(response.headers["x-exposure-gain"]) == pytest.approx(expected.gain, abs=1e-3)
    assert expected.gain < 0.5


def test_strength_zero_still_returns_the_upload_itself(default_server: ServerProcess) -> None:
    image = _lifted(dark_image(60, 90, seed=13), 3.0)
    response = _enhance(default_server, image, strength="0")
    np.testing.assert_array_equal(_pixels(response), image)
    # The model did not run: nothing was darkened, no pass was averaged.
    assert response.headers["x-exposure-gain"] == "1.000" and response.headers["x-ensemble-passes"] == "0"
    assert response.headers["x-strength"] == "0.000"


def test_both_references_zero_turn_normalisation_off(model_path: Path, tmp_path: Path) -> None:
    server = _server(model_path, tmp_path / "off.log", exposure_reference=0, exposure_noise_reference=0)
    try:
        image = _lifted(dark_image(80, 120, seed=14), 3.0)
        response = _enhance(server, image)
        assert response.headers["x-exposure-gain"] == "1.000"
        np.testing.assert_array_equal(_pixels(response), reference_enhance(model_path, image, gain=1.0))
    finally:
        assert server.stop() in GRACEFUL_EXIT_CODES


# --- what it is for, with the bundled model on real pairs ------------------------------------------


def _brightness_spread(server: ServerProcess, low: np.ndarray) -> float:
    """How much brighter (mean luma, 0-1) the model's answer to the scene at 4x gets than its answer
    to the low (strength 1: the normalisation alone, without auto strength's help)."""
    means = [estimate_exposure(_pixels(_enhance(server, _lifted(low, gain), "1"))) for gain in (1.0, 4.0)]
    return means[1] - means[0]


def test_moderately_dark_photos_are_not_blown_out(lol_pairs: Path, tmp_path: Path) -> None:
    """Val scenes as shot and 4x brighter: with normalisation (the default) the two answers are much
    closer in brightness than without it, where the brighter upload is over-brightened."""
    lows = [load_rgb(pair.low) for pair in list_pairs(lol_pairs / "val")[:3]]
    spreads = {}
    for name, settings in (("default", {}), ("off", {"exposure_reference": 0, "exposure_noise_reference": 0})):
        server = _server(BUNDLED_MODEL_PATH, tmp_path / f"{name}.log", **settings)
        try:
            spreads[name] = float(np.mean([_brightness_spread(server, low) for low in lows]))
        finally:
            assert server.stop() in GRACEFUL_EXIT_CODES
    assert abs(spreads["default"]) < 0.5 * abs(spreads["off"]), spreads
