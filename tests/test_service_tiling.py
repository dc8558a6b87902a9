"""Exact tiling: plan geometry, tiled == whole-image output on a real ORT session, bounded memory."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from service_helpers import dark_image, export_tiny_model, reference_enhance

from service.engine import Engine
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.settings import Settings
from service.tiling import TilePlan, halo_for, padded_length, plan_tiles, plan_within_budget

RADIUS = 51


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.getbasetemp())


@pytest.mark.parametrize(
    ("height", "width", "core"),
    [(1, 1, 4), (19, 23, 8), (203, 317, 32), (150, 401, 64), (97, 2000, 16), (1000, 37, 8), (361, 361, 256)],
)
def test_plan_covers_every_pixel_once_with_full_halos(height: int, width: int, core: int) -> None:
    _assert_exact_cover(plan_tiles(height, width, core=core, receptive_radius=RADIUS, multiple=4), height, width)


@settings(max_examples=120, deadline=None)
@given(
    height=st.integers(1, 2500),
    width=st.integers(1, 2500),
    budget=st.integers(1, 4_000_000),
    radius=st.sampled_from([3, 51, 147]),
)
def test_budget_plans_cover_every_pixel_once_with_full_halos(height: int, width: int, budget: int, radius: int) -> None:
    plan = plan_within_budget(height, width, max_window_pixels=budget, receptive_radius=radius, multiple=4)
    _assert_exact_cover(plan, height, width, radius)
    window_area = plan.window_shape[0] * plan.window_shape[1]
    smallest = max(2 * halo_for(radius, 4) + 4, 20) ** 2
    assert window_area <= max(budget, smallest)  # within budget unless the halo alone exceeds it
    if padded_length(height, 4) * padded_length(width, 4) <= budget:
        assert plan.is_whole_image


def test_budget_plans_pick_the_cheapest_grid() -> None:
    """Fewer computed pixels than fixed square tiles, and never a 640 x 480 photo cut in two."""
    vga = plan_within_budget(480, 640, max_window_pixels=1_800_000, receptive_radius=147, multiple=4)
    assert vga.is_whole_image and vga.computed_pixels == 480 * 640
    for height, width, most in ((1080, 1920, 1.2), (3000, 4000, 1.45), (4000, 6000, 1.5)):
        plan = plan_within_budget(height, width, max_window_pixels=1_800_000, receptive_radius=147, multiple=4)
        fixed = plan_tiles(height, width, core=256, receptive_radius=147, multiple=4)
        assert plan.computed_pixels <= most * height * width < fixed.computed_pixels
        assert plan.window_shape[0] * plan.window_shape[1] <= 1_800_000


def _assert_exact_cover(plan: TilePlan, height: int, width: int, radius: int = RADIUS) -> None:
    halo = halo_for(radius, 4)
    padded_h, padded_w = padded_length(height, 4), padded_length(width, 4)
    window_h, window_w = plan.window_shape
    assert window_h % 4 == 0 and window_w % 4 == 0 and min(plan.window_shape) >= 20
    coverage = np.zeros((height, width), dtype=int)
    for tile in plan.tiles:
        for span, window, padded in ((tile.rows, window_h, padded_h), (tile.cols, window_w, padded_w)):
            assert span.start % 4 == 0
            assert span.start >= 0 and span.start + window <= padded  # shifted inward, never shrunk
            # Context on each side is >= the halo unless that side is the image border.
            assert span.out_start - span.start >= halo or span.start == 0
            assert span.start + window - span.out_stop >= halo or span.start + window == padded
        coverage[tile.rows.out_start : tile.rows.out_stop, tile.cols.out_start : tile.cols.out_stop] += 1
    assert (coverage == 1).all()


def test_small_images_run_whole_and_large_ones_in_one_tile_shape() -> None:
    small = plan_tiles(150, 200, core=256, receptive_radius=RADIUS, multiple=4)
    assert small.is_whole_image and small.window_shape == (152, 200)
    large = plan_tiles(1000, 1500, core=256, receptive_radius=RADIUS, multiple=4)
    assert len(large.tiles) > 1 and large.window_shape == (360, 360)


def _engine(model_path: Path, tile_size: int) -> Engine:
    return Engine(
        Settings(model_path=model_path, providers=["CPUExecutionProvider"], tile_size=tile_size, intra_op_threads=2)
    )


async def _enhance(engine: Engine, image: np.ndarray, out_dtype: type, gain: float = 1.0) -> np.ndarray:
    pipeline = Pipeline(engine, Settings(max_batch_delay_ms=0), Metrics())
    try:
        return (await pipeline.enhance_pixels(image, out_dtype, gain=gain)).pixels
    finally:
        await pipeline.close()


@pytest.mark.timeout(120)
def test_tiled_output_equals_whole_image_output(model_path: Path) -> None:
    whole_engine, tiled_engine = _engine(model_path, 4096), _engine(model_path, 32)
    for height, width, seed in ((203, 317, 1), (150, 401, 2)):
        image = dark_image(height, width, seed)
        float_image = image.astype(np.float32) / 255.0
        whole = asyncio.run(_enhance(whole_engine, float_image, np.float32))
        tiled = asyncio.run(_enhance(tiled_engine, float_image, np.float32))
        assert len(tiled_engine.plan(height, width).tiles) > 10
        assert np.abs(tiled - whole).max() <= 1e-4
        tiled_8bit = asyncio.run(_enhance(tiled_engine, image, np.uint8))
        np.testing.assert_array_equal(tiled_8bit, reference_enhance(model_path, image, gain=1.0, passes=1))
        # The exposure normalisation scales each window as it is cut: still the whole-image result.
        darkened = asyncio.run(_enhance(tiled_engine, image, np.uint8, gain=0.6))
        np.testing.assert_array_equal(darkened, reference_enhance(model_path, image, gain=0.6, passes=1))


@pytest.mark.timeout(120)
def test_cost_aware_plans_equal_the_whole_image_output(model_path: Path) -> None:
    """Budgets that force non-square windows and uneven grids still give the whole-image result."""
    for budget_mb, (height, width, seed) in ((1, (203, 517, 4)), (2, (431, 290, 5)), (3, (350, 613, 6))):
        engine = Engine(
            Settings(model_path=model_path, providers=["CPUExecutionProvider"], intra_op_threads=2, memory_budget_mb=64)
        )
        # Planned by cost even where the start-up probe could not read peak memory (a busy CI host).
        engine.cost_aware = True
        engine.max_window_pixels = budget_mb * 60_000  # what a budget this small would allow
        plan = engine.plan(height, width)
        assert len(plan.tiles) > 1 and plan.window_shape[0] != plan.window_shape[1], plan.describe()
        image = dark_image(height, width, seed)
        np.testing.assert_array_equal(
            asyncio.run(_enhance(engine, image, np.uint8)), reference_enhance(model_path, image, gain=1.0, passes=1)
        )


@pytest.mark.timeout(120)
def test_a_halo_below_the_receptive_radius_shows_seams(model_path: Path) -> None:
    """The equality test above is sensitive: lying about the radius makes tiling inexact."""
    whole_engine, tiled_engine = _engine(model_path, 4096), _engine(model_path, 32)
    tiled_engine.receptive_radius = 8
    image = dark_image(150, 200, 3).astype(np.float32) / 255.0
    whole = asyncio.run(_enhance(whole_engine, image, np.float32))
    tiled = asyncio.run(_enhance(tiled_engine, image, np.float32))
    assert np.abs(tiled - whole).max() > 1e-3


@pytest.mark.timeout(120)
def test_memory_is_bounded_by_tiles_not_by_image_size(model_path: Path) -> None:
    """A 24 MP image allocates its uint8 output plus a few batches, never a float copy of the image."""
    engine = _engine(model_path, 256)
    engine.run = lambda batch: batch.copy()  # identity model: this test is about buffers, not compute
    image = np.full((4000, 6000, 3), 40, dtype=np.uint8)
    tracemalloc.start()
    try:
        output = asyncio.run(_enhance(engine, image, np.uint8))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert output[::500, ::500].tolist() == image[::500, ::500].tolist()
    output_bytes = image.nbytes
    float_copy_bytes = image.size * 4
    assert peak - output_bytes < 100e6 < float_copy_bytes, f"peak {peak / 1e6:.0f} MB"
