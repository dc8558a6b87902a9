"""Self-ensemble: the orientations, the pass budget, the average, and the running service using them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydantic
import pytest
from service_helpers import (
    GRACEFUL_EXIT_CODES,
    ServerProcess,
    dark_image,
    decode_image,
    default_ensemble_passes,
    encode_image,
    export_tiny_model,
    reference_enhance,
)

from service import ensemble
from service.engine import Engine
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.settings import DEFAULT_CPU_ENSEMBLE_PIXELS, Settings


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.getbasetemp())


# --- orientations, budget, average ----------------------------------------------------------


def test_every_orientation_is_distinct_and_undone_by_its_inverse() -> None:
    image = np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3)  # not square, no symmetry
    seen = []
    for orientation in ensemble.orientations(8):
        turned = orientation.forward(image)
        assert turned.shape in ((5, 7, 3), (7, 5, 3))
        np.testing.assert_array_equal(orientation.inverse(turned), image)
        assert not any(np.array_equal(turned, other) for other in seen if other.shape == turned.shape)
        seen.append(turned)
    assert len(seen) == 8
    # Passes are nested, and the flips (same shape as the image, so they batch together) come first.
    assert ensemble.orientations(4) == ensemble.ORIENTATIONS[:4]
    assert all(o.forward(image).shape == image.shape for o in ensemble.orientations(4))
    with pytest.raises(ValueError, match="one of"):
        ensemble.orientations(3)


@pytest.mark.parametrize(
    ("pixels", "max_passes", "budget", "expected"),
    [
        (240_000, 8, 1_000_000, 4),  # a 600 x 400 photo on the CPU default
        (307_200, 8, 1_000_000, 2),  # 640 x 480
        (600_000, 8, 1_000_000, 1),  # two passes would pass the budget
        (12_000_000, 8, 1_000_000, 1),  # a phone photo: never fewer than one pass
        (100, 8, 1_000_000, 8),
        (100, 2, 1_000_000, 2),  # FRLIE_SELF_ENSEMBLE caps it
        (100, 1, 1_000_000, 1),
        (100, 8, 0, 1),  # budget 0: off
        (250_000, 8, 1_000_000, 4),  # exactly on the budget fits
    ],
)
def test_passes_are_the_most_that_fit_the_budget(pixels: int, max_passes: int, budget: int, expected: int) -> None:
    assert ensemble.passes_for(pixels, max_passes, budget) == expected


def test_average_turns_each_answer_back_before_the_mean() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random((6, 9, 3), dtype=np.float32)
    used = ensemble.orientations(8)
    # Each pass answers in the orientation it saw; a perfect equivariant model answers truth, turned.
    answers = [np.ascontiguousarray(o.forward(truth)) for o in used]
    np.testing.assert_allclose(ensemble.average(answers, used, np.float32), truth, atol=1e-6)
    rounded = ensemble.average(answers, used)
    assert rounded.dtype == np.uint8
    np.testing.assert_array_equal(rounded, np.rint(truth * 255).astype(np.uint8))
    # Out-of-range model values are clipped only after the mean, as a single pass clips its own.
    over = np.array([[[1.3] * 3, [0.5] * 3]], np.float32)
    passes = [over, over[:, ::-1] + np.float32(0.1)]  # the second pass is off by +0.1 where the first is 1.3
    # mean (1.35, 0.55), scaled to the upright pass's mean 0.9 (from 0.95): (1.279 -> 255, 0.521 -> 133)
    np.testing.assert_array_equal(ensemble.average(passes, used[:2]), np.array([[[255] * 3, [133] * 3]], np.uint8))


def test_the_mean_keeps_the_tone_of_the_upright_pass() -> None:
    """Flipped passes that come back darker as a whole (lol-pairs train/6) average their noise away
    but do not move the answer's per-channel means off the upright pass's."""
    rng = np.random.default_rng(1)
    scene = rng.random((32, 48, 3), dtype=np.float32) * 0.5 + 0.25
    used = ensemble.orientations(4)
    noisy = [scene + rng.normal(0.0, 0.05, scene.shape).astype(np.float32) for _ in used]
    darker = [noisy[0]] + [answer * np.float32(0.9) for answer in noisy[1:]]
    answers = [np.ascontiguousarray(o.forward(answer)) for o, answer in zip(used, darker, strict=True)]
    mean = ensemble.average(answers, used, np.float32)
    np.testing.assert_allclose(ensemble.channel_means(mean), ensemble.channel_means(noisy[0]), rtol=1e-5)
    assert np.abs(mean - scene).mean() < 0.6 * np.abs(noisy[0] - scene).mean()  # the noise still averages out


def test_an_empty_mean_is_an_error_not_a_black_image() -> None:
    with pytest.raises(ValueError, match="no answers"):
        ensemble.EnsembleMean().result()


def test_settings_accept_only_nested_pass_counts() -> None:
    assert Settings().self_ensemble == 8 and Settings().self_ensemble_pixels is None
    assert Settings(self_ensemble=2).self_ensemble == 2
    with pytest.raises(pydantic.ValidationError, match="one of 1, 2, 4, 8"):
        Settings(self_ensemble=3)
    with pytest.raises(pydantic.ValidationError):
        Settings(self_ensemble_pixels=-1)


# --- the pipeline and the service -----------------------------------------------------------


def test_engine_budget_defaults_to_the_cpu_budget(model_path: Path) -> None:
    engine = Engine(Settings(model_path=model_path, providers=["CPUExecutionProvider"], intra_op_threads=2))
    assert engine.ensemble_pixels == DEFAULT_CPU_ENSEMBLE_PIXELS
    assert engine.ensemble_passes(400, 600) == 4 == default_ensemble_passes(400, 600)
    assert engine.ensemble_passes(3000, 4000) == 1
    assert engine.describe()["example_ensemble_passes"] == {
        "640x480": 2,
        "1920x1080": 1,
        "4000x3000": 1,
        "6000x4000": 1,
    }


@pytest.mark.timeout(120)
def test_tiled_ensemble_equals_the_whole_image_reference(model_path: Path) -> None:
    """Every pass is tiled exactly (transposed ones in transposed windows) and averaged in pass order."""
    engine = Engine(
        Settings(model_path=model_path, providers=["CPUExecutionProvider"], intra_op_threads=2, tile_size=32)
    )

    async def enhance(image: np.ndarray, passes: int) -> tuple[np.ndarray, int]:
        pipeline = Pipeline(engine, Settings(max_batch_delay_ms=0), Metrics())
        try:
            result = await pipeline.enhance_pixels(image, gain=0.8, passes=passes)
            return result.pixels, result.tiles
        finally:
            await pipeline.close()

    image = dark_image(203, 317, seed=3)  # not square: the transposed passes are tiled differently
    single_tiles = len(engine.plan(203, 317).tiles)
    for passes in (2, 4, 8):
        pixels, tiles = asyncio.run(enhance(image, passes))
        np.testing.assert_array_equal(pixels, reference_enhance(model_path, image, gain=0.8, passes=passes))
        assert tiles == passes * single_tiles and single_tiles > 1
    # And the ensemble is not the single pass: the test can tell them apart.
    single_pass = asyncio.run(enhance(image, 1))[0]
    assert not np.array_equal(reference_enhance(model_path, image, gain=0.8, passes=8), single_pass)


@pytest.fixture(scope="module")
def two_pass_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """At most 2 passes, within a budget of 20,000 model pixels (no policy in the file: `auto` is the model output)."""
    running = ServerProcess(
        model_path,
        tmp_path_factory.mktemp("logs") / "ensemble.log",
        self_ensemble=2,
        self_ensemble_pixels=20_000,
    ).start()
    yield running
    assert running.stop() in GRACEFUL_EXIT_CODES


@pytest.mark.parametrize(("height", "width", "passes"), [(60, 80, 2), (100, 150, 1)])
def test_the_service_reports_and_applies_the_passes_of_its_budget(
    two_pass_server: ServerProcess, model_path: Path, height: int, width: int, passes: int
) -> None:
    image = dark_image(height, width, seed=height)
    model_seconds_before = two_pass_server.metric("frlie_inference_duration_seconds_sum")
    response = two_pass_server.client.post(
        "/enhance", files={"image": ("in.png", encode_image(image, "PNG"))}, data={"strength": "1"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-ensemble-passes"] == str(passes)
    assert int(response.headers["x-tile-count"]) == passes
    # Flipped passes share ORT calls; each call's time counts once in the reported model time.
    model_seconds = two_pass_server.metric("frlie_inference_duration_seconds_sum") - model_seconds_before
    assert float(response.headers["x-inference-time-ms"]) / 1000 == pytest.approx(model_seconds, rel=0.01, abs=2e-4)
    expected = reference_enhance(model_path, image, passes=passes)
    np.testing.assert_array_equal(np.asarray(decode_image(response.content)), expected)
    ready = two_pass_server.client.get("/readyz").json()
    assert ready["self_ensemble_pixels"] == 20_000 and ready["settings"]["self_ensemble"] == 2


def test_an_unchanged_upload_reports_no_passes(two_pass_server: ServerProcess) -> None:
    image = np.full((40, 40, 3), 200, np.uint8)  # already brighter than any target: returned as is
    response = two_pass_server.client.post(
        "/enhance", files={"image": ("in.png", encode_image(image, "PNG"))}, data={"strength": "0"}
    )
    assert response.status_code == 200 and response.headers["x-ensemble-passes"] == "0"
    np.testing.assert_array_equal(np.asarray(decode_image(response.content)), image)
