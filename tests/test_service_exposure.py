"""Exposure normalisation: uploads brighter than the model's training lows are darkened before it.

Through a real server: the gain the service picks and reports, the exact model input it implies,
the setting that turns it off; with the bundled model on real pairs: a moderately dark photo no
longer comes back much brighter than the same scene shot darker.
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
from service.exposure import ExposureNormalisation, estimate_exposure
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
    assert Settings().exposure_normalisation == ExposureNormalisation(0.08, 0.5)


# --- through the running service ---------------------------------------------------------------


def test_bright_upload_is_darkened_by_the_reported_gain_before_the_model(
    default_server: ServerProcess, model_path: Path
) -> None:
    defaults = Settings()
    image = _lifted(dark_image(80, 120, seed=11), 3.0)  # mean luma ~0.45: a well-lit photo
    exposure = estimate_exposure(image)
    expected_gain = (defaults.exposure_reference / exposure) ** defaults.exposure_power
    assert expected_gain < 0.5
    response = _enhance(default_server, image)
    assert float(response.headers["x-exposure-gain"]) == pytest.approx(expected_gain, abs=1e-3)
    np.testing.assert_array_equal(_pixels(response), reference_enhance(model_path, image, gain=expected_gain))


def test_dark_upload_reaches_the_model_unchanged(default_server: ServerProcess, model_path: Path) -> None:
    image = _lifted(dark_image(80, 120, seed=12), 0.25)
    assert estimate_exposure(image) < Settings().exposure_reference
    response = _enhance(default_server, image)
    assert response.headers["x-exposure-gain"] == "1.000"
    np.testing.assert_array_equal(_pixels(response), reference_enhance(model_path, image, gain=1.0))


def test_strength_zero_still_returns_the_upload_itself(default_server: ServerProcess) -> None:
    image = _lifted(dark_image(60, 90, seed=13), 3.0)
    np.testing.assert_array_equal(_pixels(_enhance(default_server, image, strength="0")), image)


def test_reference_zero_turns_normalisation_off(model_path: Path, tmp_path: Path) -> None:
    server = _server(model_path, tmp_path / "off.log", exposure_reference=0)
    try:
        image = _lifted(dark_image(80, 120, seed=14), 3.0)
        response = _enhance(server, image)
        assert response.headers["x-exposure-gain"] == "1.000"
        np.testing.assert_array_equal(_pixels(response), reference_enhance(model_path, image, gain=1.0))
    finally:
        assert server.stop() in GRACEFUL_EXIT_CODES


# --- what it is for, with the bundled model on real pairs ------------------------------------------


def _brightness_spread(server: ServerProcess, low: np.ndarray) -> float:
    """How much brighter (mean luma, 0-1) the answer to the scene at 4x gets than the answer to the low."""
    means = [estimate_exposure(_pixels(_enhance(server, _lifted(low, gain), "auto"))) for gain in (1.0, 4.0)]
    return means[1] - means[0]


def test_moderately_dark_photos_are_not_blown_out(lol_pairs: Path, tmp_path: Path) -> None:
    """The same val scene, as shot and 4x brighter: with normalisation (the default) the two answers
    are much closer in brightness than without it, where the brighter upload is over-brightened."""
    pair = list_pairs(lol_pairs / "val")[0]
    low = load_rgb(pair.low)
    spreads = {}
    for name, settings in (("default", {}), ("off", {"exposure_reference": 0})):
        server = _server(BUNDLED_MODEL_PATH, tmp_path / f"{name}.log", **settings)
        try:
            spreads[name] = _brightness_spread(server, low)
        finally:
            assert server.stop() in GRACEFUL_EXIT_CODES
    assert abs(spreads["default"]) < 0.5 * abs(spreads["off"]), spreads
