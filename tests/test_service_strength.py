"""The strength control: 0 is the upload, 1 the model output, blends in between, `auto` by brightness target."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
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

from model.contract import BUNDLED_MODEL_PATH
from service.exposure import ExposureReading, estimate_exposure
from service.settings import Settings
from service.strength import (
    AUTO,
    MATCH_STEPS,
    AutoStrength,
    blend_into,
    exposure_thumbnail,
    matched_gain,
    parse_strength,
    resolve_strength,
)

pytestmark = pytest.mark.timeout(120)
# Targets under the tiny model's own brightening (mean luma ~0.55-0.65 on the test patterns), so
# each test can tell the target's strength from full strength and from the floor.
AUTO_SETTINGS = {
    "auto_strength_target": 0.25,
    "auto_strength_noisy_target": 0.45,
    "auto_strength_noisy": 0.5,
    "auto_strength_floor": 0.1,
    # Low enough that the tiny model's noisy dark patterns (strength ~0.7) take the matched-gain path.
    "auto_strength_match_from": 0.5,
}


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


def _luma(response: httpx.Response) -> float:
    return estimate_exposure(_pixels(response).astype(np.uint8))


def _auto_gain(model_path: Path, upload: np.ndarray) -> float:
    """The input gain `auto` should pick, from the independent reference model on the thumbnail."""
    settings = Settings(**AUTO_SETTINGS)
    reading = settings.exposure_normalisation.read(upload)

    async def reference_model(image: np.ndarray, gain: float) -> np.ndarray:
        return reference_enhance(model_path, image, gain=gain, passes=1)

    return asyncio.run(matched_gain(settings.auto_strength, reading, upload, reference_model))


def _match(auto: AutoStrength, reading: ExposureReading, output_exposure_at: Callable[[float], float]) -> float:
    """``matched_gain`` with a stand-in model whose output is a flat image of the given mean luma."""

    async def flat_model(image: np.ndarray, gain: float) -> np.ndarray:
        return np.full((4, 4, 3), output_exposure_at(gain), dtype=np.float32)

    return asyncio.run(matched_gain(auto, reading, np.zeros((8, 8, 3), np.uint8), flat_model))


def _assert_is_the_blend(response: httpx.Response, upload: np.ndarray, model_path: Path) -> float:
    """The answer (to strength=auto) is the upload blended, at the strength X-Strength reports, with
    the model output at the input gain auto picks, which X-Exposure-Gain reports."""
    strength = float(response.headers["x-strength"])
    gain = _auto_gain(model_path, upload)
    assert float(response.headers["x-exposure-gain"]) == pytest.approx(gain, abs=1e-3)
    model = reference_enhance(model_path, upload, gain=gain).astype(np.float32)
    expected = upload + strength * (model - upload)
    assert np.abs(_pixels(response) - expected).max() <= 1
    return strength


def test_auto_lifts_a_dark_photo_to_its_target_and_keeps_a_bright_one_close(
    server: ServerProcess, model_path: Path
) -> None:
    dark = dark_image(80, 120, seed=7)  # noisy: a low-light capture
    assert estimate_exposure(dark) < AUTO_SETTINGS["auto_strength_target"]
    assert estimate_exposure(reference_enhance(model_path, dark)) > AUTO_SETTINGS["auto_strength_noisy_target"]
    response = _enhance(server, dark)
    # The blend at the reading's gain would be mostly model, so auto darkened the input instead, until
    # the model output itself was about as bright as the target: (almost) no upload noise mixed back.
    settings = Settings(**AUTO_SETTINGS)
    reading = settings.exposure_normalisation.read(dark)
    assert float(response.headers["x-exposure-gain"]) < 0.9 * reading.gain
    unmatched = settings.auto_strength.strength_for(reading, estimate_exposure(reference_enhance(model_path, dark)))
    assert unmatched >= AUTO_SETTINGS["auto_strength_match_from"]
    # (The tiny random model's brightness hardly follows its input's, so the match itself is shown
    # with the bundled model below.)
    assert AUTO_SETTINGS["auto_strength_floor"] < _assert_is_the_blend(response, dark, model_path) <= 1.0
    assert _luma(response) == pytest.approx(AUTO_SETTINGS["auto_strength_noisy_target"], abs=0.01)

    bright = bright_image(80, 120, seed=7)
    assert estimate_exposure(bright) > AUTO_SETTINGS["auto_strength_noisy_target"]
    response = _enhance(server, bright, strength="auto")
    floor = AUTO_SETTINGS["auto_strength_floor"]
    assert _assert_is_the_blend(response, bright, model_path) == pytest.approx(floor, abs=1e-3)


def test_auto_never_answers_a_brighter_photo_with_a_darker_one(server: ServerProcess) -> None:
    strengths, lumas = [], []
    for gain in (1.0, 1.5, 2.0, 3.0, 4.0, 6.0):  # clean images: scenes lit brighter and brighter
        image = np.clip(dark_image(60, 80, seed=8, noise=0).astype(np.float32) * gain, 0, 255).astype(np.uint8)
        response = _enhance(server, image)
        strengths.append(float(response.headers["x-strength"]))
        lumas.append(_luma(response))
    assert lumas[0] == pytest.approx(AUTO_SETTINGS["auto_strength_target"], abs=0.01)  # lifted, not blown out
    assert strengths[-1] == AUTO_SETTINGS["auto_strength_floor"]
    assert all(b <= a for a, b in itertools.pairwise(strengths)), strengths
    assert all(b >= a - 0.005 for a, b in itertools.pairwise(lumas)), lumas


def test_a_brightened_noisy_capture_gets_the_low_light_target(server: ServerProcess, model_path: Path) -> None:
    """A dark, noisy capture brightened 2x after the fact, and a clean photo just as bright: the noise
    says the first is a low-light capture, so it is lifted to the higher target; the clean one is
    already past the clean target and gets the floor."""
    noisy = np.clip(dark_image(80, 120, seed=9).astype(np.float32) * 2, 0, 255).astype(np.uint8)
    clean = np.clip(dark_image(80, 120, seed=9, noise=0).astype(np.float32) * 2, 0, 255).astype(np.uint8)
    assert (
        AUTO_SETTINGS["auto_strength_target"] < estimate_exposure(clean) < AUTO_SETTINGS["auto_strength_noisy_target"]
    )
    response = _enhance(server, noisy)
    assert float(response.headers["x-digital-gain"]) > 1.5
    assert _assert_is_the_blend(response, noisy, model_path) > AUTO_SETTINGS["auto_strength_floor"]
    assert _luma(response) == pytest.approx(AUTO_SETTINGS["auto_strength_noisy_target"], abs=0.01)
    response = _enhance(server, clean)
    assert _assert_is_the_blend(response, clean, model_path) == AUTO_SETTINGS["auto_strength_floor"]


def test_auto_with_the_bundled_model_lifts_clean_photos_to_the_target_without_a_cliff(tmp_path: Path) -> None:
    """The default rule with the bundled model, on a clean photo (taken in good light, or denoised)
    sent at exposures from dark to bright: the answer's brightness never falls as the upload's rises
    (no cliff), and it is brought up to the target brightness, not blown out past it."""
    target = Settings().auto_strength_target
    scene = dark_image(120, 180, seed=3, noise=0).astype(np.float32)
    scene_mean = estimate_exposure(scene.astype(np.uint8))
    server = ServerProcess(BUNDLED_MODEL_PATH, tmp_path / "bundled.log").start()
    try:
        answers = []
        for exposure in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6):
            upload = np.clip(np.rint(scene * (exposure / scene_mean)), 0, 255).astype(np.uint8)
            response = _enhance(server, upload)
            answer = _pixels(response).astype(np.uint8)
            answers.append((round(estimate_exposure(upload), 3), round(estimate_exposure(answer), 3)))
            if estimate_exposure(upload) >= target:  # already bright enough: returned as it came
                assert float(response.headers["X-Strength"]) == 0.0
                np.testing.assert_array_equal(answer, upload)
    finally:
        assert server.stop() in GRACEFUL_EXIT_CODES
    assert all(b[1] >= a[1] - 0.01 for a, b in itertools.pairwise(answers)), answers
    # At most the target, or the upload's own brightness when it is already brighter.
    assert all(out <= max(upload, target) + 0.02 for upload, out in answers), answers
    assert answers[2][1] == pytest.approx(target, abs=0.02), answers  # 0.15: lifted to the target


def test_auto_matches_the_gain_of_a_brightened_low_light_photo_instead_of_blending(
    tmp_path: Path, lol_pairs: Path
) -> None:
    """A real LOL low brightened 2x after capture (its noise says so): the blend at the reading's gain
    would be mostly model plus some of the upload's amplified noise; auto darkens the network's input
    instead, so the answer is (nearly) all model at the target brightness, and closer to the reference."""
    from training.data import list_pairs, load_rgb
    from training.metrics import psnr

    pair = next(p for p in list_pairs(lol_pairs / "val") if p.name == "101.png")
    upload = np.clip(load_rgb(pair.low).astype(np.int16) * 2, 0, 255).astype(np.uint8)
    reference = load_rgb(pair.high)
    settings = Settings()
    reading = settings.exposure_normalisation.read(upload)
    full = reference_enhance(BUNDLED_MODEL_PATH, upload, gain=reading.gain)
    unmatched = settings.auto_strength.strength_for(reading, estimate_exposure(full))
    assert reading.noisiness >= settings.auto_strength_noisy and unmatched >= settings.auto_strength_match_from
    blended = np.rint(upload + unmatched * (full.astype(np.float32) - upload)).astype(np.uint8)

    server = ServerProcess(BUNDLED_MODEL_PATH, tmp_path / "bundled.log").start()
    try:
        response = _enhance(server, upload)
    finally:
        assert server.stop() in GRACEFUL_EXIT_CODES
    answer = _pixels(response).astype(np.uint8)
    assert float(response.headers["x-exposure-gain"]) < reading.gain
    assert float(response.headers["x-strength"]) > unmatched
    assert estimate_exposure(answer) == pytest.approx(settings.auto_strength_noisy_target, abs=0.03)
    assert psnr(answer, reference) > psnr(blended, reference) + 1.0


@pytest.mark.parametrize("value", ["1.5", "-0.1", "strong", "nan", "inf"])
def test_bad_strength_is_a_422_that_names_the_parameter(server: ServerProcess, value: str) -> None:
    response = _enhance(server, dark_image(20, 20), strength=value)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_parameters"
    assert any("strength" in entry["loc"] for entry in body["detail"])


# --- the parts, without a server ------------------------------------------------------------


def _reading(exposure: float, digital_gain: float = 1.0, noisiness: float = 0.0) -> ExposureReading:
    return ExposureReading(exposure, digital_gain, 1.0, noisiness)


def test_auto_strength_rule_and_its_validation() -> None:
    auto = AutoStrength(target=0.4, noisy_target=0.5, noisy=0.5, floor=0.05)
    clean = _reading(0.15)
    # Before the model has run: an upper bound (the model may be needed at full strength).
    assert auto.strength_for(clean) == 1.0
    # The blend is linear in mean luma: 0.15 + s * (0.80 - 0.15) = 0.4.
    assert auto.strength_for(clean, output_exposure=0.80) == pytest.approx(0.25 / 0.65)
    assert auto.strength_for(clean, output_exposure=0.35) == 1.0  # the model alone falls short: all of it
    assert auto.strength_for(clean, output_exposure=0.10) == 0.05  # the model darkens it: the floor
    assert auto.strength_for(_reading(0.45)) == auto.strength_for(_reading(0.45), output_exposure=0.7) == 0.05
    # With a dark capture's noise: the higher target.
    noisy = _reading(0.45, digital_gain=3.0, noisiness=3.0)
    assert auto.strength_for(noisy, output_exposure=0.7) == pytest.approx(0.05 / 0.25)
    assert (
        auto.target_for(_reading(0.2, noisiness=0.49)) == 0.4 and auto.target_for(_reading(0.2, noisiness=0.5)) == 0.5
    )
    for bad in (
        {"target": 0.5, "noisy_target": 0.4, "noisy": 0.5, "floor": 0.1},
        {"target": 0.4, "noisy_target": 1.5, "noisy": 0.5, "floor": 0.1},
        {"target": 0.4, "noisy_target": 0.5, "noisy": -1.0, "floor": 0.1},
        {"target": 0.4, "noisy_target": 0.5, "noisy": 0.5, "floor": 1.1},
    ):
        with pytest.raises(ValueError):
            AutoStrength(**bad)
    with pytest.raises(ValueError):
        Settings(auto_strength_target=0.6, auto_strength_noisy_target=0.4)


def test_matched_gain_reaches_the_target_for_noisy_uploads_only() -> None:
    """On a model whose output brightness is proportional to its input's (a fixed-gain model),
    matching lands on the target; clean uploads and ones the blend gives little keep their gain."""
    auto = AutoStrength(target=0.4, noisy_target=0.5, noisy=0.5, floor=0.0, match_from=0.75)
    calls: list[float] = []

    def fixed_gain_model(gain: float) -> float:  # output mean luma of an upload at 0.1 times 6
        calls.append(gain)
        return 0.1 * gain * 6.0

    noisy = ExposureReading(0.1, 1.0, 1.0, noisiness=1.0)  # blend strength (0.5 - 0.1) / (0.6 - 0.1) = 0.8
    assert _match(auto, noisy, fixed_gain_model) == pytest.approx(0.5 / 0.6)
    assert len(calls) == MATCH_STEPS
    calls.clear()
    assert _match(auto, ExposureReading(0.1, 1.0, 1.0, noisiness=0.2), fixed_gain_model) == 1.0
    assert not calls  # clean: no thumbnail run at all
    assert _match(AutoStrength(0.4, 0.5, 0.5, 0.0, match_from=0.9), noisy, fixed_gain_model) == 1.0
    darkish = ExposureReading(0.1, 1.0, 1.0, noisiness=1.0)
    assert _match(auto, darkish, lambda gain: 0.45 * gain) == 1.0  # the model alone falls short
    with pytest.raises(ValueError):
        AutoStrength(0.4, 0.5, 0.5, 0.0, match_from=1.5)


def test_exposure_thumbnail_keeps_the_mean_and_shrinks_by_a_whole_factor() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (601, 1000, 3), dtype=np.uint8)
    small = exposure_thumbnail(image, side=256)
    assert small.dtype == np.uint8 and small.shape == (150, 250, 3)  # factor 4, the ragged edge dropped
    assert small.mean() == pytest.approx(image[:600].mean(), abs=0.5)
    assert exposure_thumbnail(image[:200, :200], side=256) is not None
    np.testing.assert_array_equal(exposure_thumbnail(image[:200, :200], side=256), image[:200, :200])
    as_float = exposure_thumbnail(image.astype(np.float32) / 255, side=256)
    assert as_float.dtype == np.float32 and as_float.shape == (150, 250, 3)


def test_exposure_estimate_and_resolution() -> None:
    gray = np.full((64, 64, 3), 128, dtype=np.uint8)
    assert estimate_exposure(gray) == pytest.approx(128 / 255, abs=1e-6)
    assert estimate_exposure(gray.astype(np.float32) / 255) == pytest.approx(128 / 255, abs=1e-6)
    auto = AutoStrength(target=0.6, noisy_target=0.6, noisy=0.5, floor=0.0)
    reading = _reading(estimate_exposure(gray))
    assert resolve_strength(AUTO, reading, auto, output_exposure=0.7) == pytest.approx(
        (0.6 - 128 / 255) / (0.7 - 128 / 255)
    )
    assert resolve_strength(0.3, reading, auto) == 0.3
    with pytest.raises(ValueError):
        resolve_strength(1.2, reading, auto)


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
