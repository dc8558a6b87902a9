"""The strength control: 0 is the upload, 1 the model output, blends in between (``auto`` is the
calibrated policy's choice: tests/test_service_policy.py)."""

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

from service.strength import AUTO, blend_into, parse_strength

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = ServerProcess(model_path, tmp_path_factory.mktemp("logs") / "strength.log", tile_size=64).start()
    yield running
    assert running.stop() in GRACEFUL_EXIT_CODES


def _enhance(server: ServerProcess, image: np.ndarray, **fields: str) -> httpx.Response:
    return server.client.post("/enhance", files={"image": ("in.png", encode_image(image, "PNG"))}, data=fields)


def _pixels(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(decode_image(response.content)).astype(np.int16)


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


@pytest.mark.parametrize("value", ["1.5", "-0.1", "strong", "nan", "inf"])
def test_bad_strength_is_a_422_that_names_the_parameter(server: ServerProcess, value: str) -> None:
    response = _enhance(server, dark_image(20, 20), strength=value)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_parameters"
    assert any("strength" in entry["loc"] for entry in body["detail"])


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
