"""The ORT engine: metadata, providers, IOBinding, fixed batch shapes, bad model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from service_helpers import TINY_MODEL_VERSION, export_tiny_model

from service.engine import Engine, ModelFileError
from service.settings import Settings


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.getbasetemp())


def test_metadata_and_active_provider(model_path: Path) -> None:
    engine = Engine(Settings(model_path=model_path, tile_size=250))  # default providers: CUDA, then CPU
    assert engine.model_version == TINY_MODEL_VERSION
    assert engine.receptive_radius == 51 and engine.size_multiple == 4
    assert engine.providers == engine.session.get_providers() and engine.provider == engine.providers[0]
    assert engine.tile_core == 252 and engine.tile_shape == (252 + 2 * 52,) * 2  # rounded to the stride


def test_io_binding_gives_the_same_result_as_run(model_path: Path) -> None:
    settings = Settings(model_path=model_path, providers=["CPUExecutionProvider"])
    plain, bound = Engine(settings, io_binding=False), Engine(settings, io_binding=True)
    batch = np.random.default_rng(0).random((2, 3, 40, 56), dtype=np.float32)
    np.testing.assert_array_equal(bound.run(batch), plain.run(batch))


def test_on_cpu_tiles_run_one_per_call_but_small_images_batch(model_path: Path) -> None:
    """ORT's working memory grows with the pixels per call, so a CPU batch holds one tile's worth."""
    engine = Engine(Settings(model_path=model_path, providers=["CPUExecutionProvider"], tile_size=64))
    assert engine.tile_shape == (168, 168) and engine.max_batch_pixels == 168 * 168
    assert engine.batch_limit(168, 168) == 1 and engine.batch_limit(64, 96) == 4
    unlimited = Engine(Settings(model_path=model_path, providers=["CPUExecutionProvider"], max_batch_pixels=10**9))
    assert unlimited.batch_limit(*unlimited.tile_shape) == 4


def _recorded_warm_up(engine: Engine) -> list[tuple[int, ...]]:
    seen: list[tuple[int, ...]] = []
    run = engine.run
    engine.run = lambda batch: seen.append(batch.shape) or run(batch)
    engine.warm_up()
    return seen


def test_warm_up_covers_the_tile_batch_shapes(model_path: Path) -> None:
    settings = dict(model_path=model_path, providers=["CPUExecutionProvider"], tile_size=16, max_batch_pixels=10**9)
    engine = Engine(Settings(**settings))
    # Every batch shape once, then one warm call on which the throughput is measured.
    assert _recorded_warm_up(engine) == [
        (1, 3, *engine.tile_shape),
        (4, 3, *engine.tile_shape),
        (1, 3, *engine.tile_shape),
    ]
    assert engine.seconds_per_pixel is not None and engine.seconds_per_pixel > 0
    padded = Engine(Settings(**settings), fixed_batch_shapes=True)
    assert set(_recorded_warm_up(padded)) == {(4, 3, *padded.tile_shape), (1, 3, *padded.tile_shape)}
    assert padded.describe()["warmup_seconds"] > 0


def test_bad_model_files_are_explained(model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="make train"):
        Engine(Settings(model_path=tmp_path / "missing.onnx"))
    stripped = onnx.load(str(model_path))
    del stripped.metadata_props[:]
    onnx.save(stripped, str(tmp_path / "stripped.onnx"))
    with pytest.raises(ModelFileError, match="receptive_radius"):
        Engine(Settings(model_path=tmp_path / "stripped.onnx", providers=["CPUExecutionProvider"]))


def test_cost_aware_windows_come_from_the_measured_memory_per_pixel(model_path: Path) -> None:
    engine = Engine(Settings(model_path=model_path, providers=["CPUExecutionProvider"], memory_budget_mb=64))
    assert engine.cost_aware and engine.describe()["tiling"] == "cost-aware"
    assert engine.working_bytes_per_pixel is not None and 50 < engine.working_bytes_per_pixel < 5000
    assert engine.max_window_pixels == max(int(64 * 2**20 / engine.working_bytes_per_pixel), 360 * 360)
    assert engine.seconds_per_pixel is not None and engine.seconds_per_pixel > 0
    # No window of any plan is over the budget, and the CPU batch limit is that same budget.
    plan = engine.plan(3000, 4000)
    assert plan.window_shape[0] * plan.window_shape[1] <= engine.max_window_pixels == engine.max_batch_pixels
    assert engine.plan(300, 400).is_whole_image
    assert engine.predicted_seconds(plan.computed_pixels) == pytest.approx(
        plan.computed_pixels * engine.seconds_per_pixel
    )
    assert set(engine.describe()["example_plans"]) == {"640x480", "1920x1080", "4000x3000", "6000x4000"}
    larger = Engine(Settings(model_path=model_path, providers=["CPUExecutionProvider"], memory_budget_mb=1024))
    assert larger.max_window_pixels > engine.max_window_pixels
    assert larger.plan(3000, 4000).computed_pixels < plan.computed_pixels
