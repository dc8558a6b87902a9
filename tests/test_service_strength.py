"""The strength control: 0 is the upload, 1 the model output, blends in between, `auto` by exposure."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_helpers import (
    GRACEFUL_EXIT_CODES,
    ServerProcess,
    dark_image,
    decode_image,
    encode_image,
    export_tiny_model,
    reference_enhance,
)

from service.exposure import estimate_exposure
from service.settings import Settings
from service.strength import AUTO, AutoStrength, blend_into, parse_strength, resolve_strength

pytestmark = pytest.mark.timeout(120)
AUTO_SETTINGS = {"auto_strength_dark": 0.25, "auto_strength_bright": 0.55, "auto_strength_floor": 0.3}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = ServerProcess(
        model_path, tmp_path_factory.mktemp("logs") / "strength.log", tile_size=64, **AUTO_SETTINGS
    ).start()
    yield running
    assert running.stop() in GRACEFUL_EXIT_CODES


def _enhance(server: ServerProcess, image: np.ndarray, **fields: str) -> httpx.Response:
    return server.client.post("/enhance", files={"image": ("in.png", encode_image(image, "PNG"))}, data=fields)


def _pixels(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(decode_image(response.content)).astype(np.int16)


def bright_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A well-exposed image: the dark test pattern, nearly noise-free (a well-lit capture has little
    noise for its signal), lifted to a mean luma around 0.6."""
    return np.clip(dark_image(height, width, seed, noise=0.3).astype(np.int16) * 3 + 40, 0, 255).astype(np.uint8)


def scene_exposure(image: np.ndarray) -> float:
    """What ``auto`` judges: the mean luma with the digital gain read from the noise divided out."""
    return Settings().exposure_normalisation.read(image).scene_exposure


# --- through the running service ------------------------------------------------------------


def test_strength_zero_returns_the_upload_without_running_the_model(server: ServerProcess) -> None:
    image = dark_image(80, 120, seed=4)
    response = _enhance(server, image, strength="0")
    np.testing.assert_array_equal(_pixels(response), image)
    assert response.headers["x-tile-count"] == "0" and float(response.headers["x-strength"]) == 0.0


def test_strength_one_is_the_model_output(server: ServerProcess, model_path: Path) -> None:
    image = dark_image(80, 120, seed=5)
    for request in ({"strength": "1"}, {"strength": "1.0"}):
        np.testing.assert_array_equal(_pixels(_enhance(server, image, **request)), reference_enhance(model_path, image))
    query = server.client.post("/enhance?strength=1", files={"image": ("in.png", encode_image(image, "PNG"))})
    np.testing.assert_array_equal(_pixels(query), reference_enhance(model_path, image))


def test_brightness_rises_smoothly_with_strength(server: ServerProcess, model_path: Path) -> None:
    image = dark_image(80, 120, seed=6)
    model = reference_enhance(model_path, image).astype(np.float32)
    assert model.mean() > image.mean()  # the tiny model brightens this image, so the sweep must rise
    strengths = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
    means = []
    for strength in strengths:
        output = _pixels(_enhance(server, image, strength=str(strength)))
        expected = image + strength * (model - image)
        assert np.abs(output - expected).max() <= 1  # the blend, up to rounding: no cliff anywhere
        means.append(output.mean())
    assert all(b > a for a, b in itertools.pairwise(means)), means


def test_auto_gives_dark_photos_full_strength_and_keeps_bright_ones_close(
    server: ServerProcess, model_path: Path
) -> None:
    dark = dark_image(80, 120, seed=7)
    assert estimate_exposure(dark) < AUTO_SETTINGS["auto_strength_dark"]
    np.testing.assert_array_equal(_pixels(_enhance(server, dark)), reference_enhance(model_path, dark))

    bright = bright_image(80, 120, seed=7)
    assert scene_exposure(bright) > AUTO_SETTINGS["auto_strength_bright"]
    response = _enhance(server, bright, strength="auto")
    floor = AUTO_SETTINGS["auto_strength_floor"]
    assert float(response.headers["x-strength"]) == pytest.approx(floor, abs=1e-3)
    model_change = np.abs(reference_enhance(model_path, bright).astype(np.float32) - bright)
    change = np.abs(_pixels(response) - bright.astype(np.float32))
    # The answer moves at most `floor` of the way from the upload towards the model output.
    assert change.mean() <= floor * model_change.mean() + 0.5


def test_auto_strength_falls_as_the_scene_gets_brighter(server: ServerProcess) -> None:
    applied = []
    for gain in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):  # clean images: scenes lit brighter and brighter
        image = np.clip(dark_image(60, 80, seed=8, noise=0).astype(np.float32) * gain, 0, 255).astype(np.uint8)
        applied.append(float(_enhance(server, image).headers["x-strength"]))
    assert applied[0] == 1.0 and applied[-1] == AUTO_SETTINGS["auto_strength_floor"]
    assert all(b <= a for a, b in itertools.pairwise(applied)), applied


def test_auto_gives_a_brightened_noisy_dark_capture_full_strength(server: ServerProcess) -> None:
    """A dark, noisy capture brightened 4x after the fact is bright, but its noise says the scene was
    dark: auto judges the scene, so it still gets the model's full effect."""
    image = np.clip(dark_image(80, 120, seed=9).astype(np.float32) * 4, 0, 255).astype(np.uint8)
    assert estimate_exposure(image) > AUTO_SETTINGS["auto_strength_bright"]
    assert scene_exposure(image) < AUTO_SETTINGS["auto_strength_dark"]
    response = _enhance(server, image)
    assert float(response.headers["x-strength"]) == 1.0
    assert float(response.headers["x-digital-gain"]) > 2.0


@pytest.mark.parametrize("value", ["1.5", "-0.1", "strong", "nan", "inf"])
def test_bad_strength_is_a_422_that_names_the_parameter(server: ServerProcess, value: str) -> None:
    response = _enhance(server, dark_image(20, 20), strength=value)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_parameters"
    assert any("strength" in entry["loc"] for entry in body["detail"])


# --- the parts, without a server ------------------------------------------------------------


def test_auto_strength_curve_and_its_validation() -> None:
    curve = AutoStrength(dark=0.2, bright=0.6, floor=0.25)
    assert curve.strength_for(0.0) == curve.strength_for(0.2) == 1.0
    assert curve.strength_for(0.4) == pytest.approx(0.625)
    assert curve.strength_for(0.6) == curve.strength_for(1.0) == 0.25
    with pytest.raises(ValueError):
        AutoStrength(dark=0.5, bright=0.5, floor=0.1)
    with pytest.raises(ValueError):
        Settings(auto_strength_dark=0.6, auto_strength_bright=0.4)


def test_exposure_estimate_and_resolution() -> None:
    gray = np.full((64, 64, 3), 128, dtype=np.uint8)
    assert estimate_exposure(gray) == pytest.approx(128 / 255, abs=1e-6)
    assert estimate_exposure(gray.astype(np.float32) / 255) == pytest.approx(128 / 255, abs=1e-6)
    curve = AutoStrength(dark=0.2, bright=0.6, floor=0.0)
    exposure = estimate_exposure(gray)
    assert resolve_strength(AUTO, exposure, curve) == pytest.approx(1 - (128 / 255 - 0.2) / 0.4)
    assert resolve_strength(0.3, exposure, curve) == 0.3
    with pytest.raises(ValueError):
        resolve_strength(1.2, exposure, curve)


def test_blend_is_exact_at_the_ends_and_rounds_between() -> None:
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (300, 40, 3), dtype=np.uint8)  # taller than one blend step
    model = rng.integers(0, 256, (300, 40, 3), dtype=np.uint8)
    for strength, expected in ((1.0, model), (0.0, original)):
        out = model.copy()
        blend_into(out, original, strength)
        np.testing.assert_array_equal(out, expected)
    out = model.copy()
    blend_into(out, original, 0.5)
    np.testing.assert_array_equal(out, np.rint((original.astype(np.float32) + model) / 2).astype(np.uint8))


def test_cli_strength_argument() -> None:
    assert parse_strength("auto") == AUTO and parse_strength("AUTO") == AUTO
    assert parse_strength("0.4") == 0.4
    for bad in ("2", "-1", "half"):
        with pytest.raises(Exception, match="from 0 to 1"):
            parse_strength(bad)
