"""One tiling measurement, run inside a fresh process by bench.isolate (see tiling_bench).

Imports only the service and numpy (no torch), so the process's memory is what a serving
process would hold: the ORT session, the image, and what enhancing it needs.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.images import dark_photo
from bench.service_config import check_provider, service_env, settings_from
from service.engine import Engine
from service.memory import current_rss_bytes, reset_peak_rss, return_freed_buffers_to_the_os
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.settings import Settings


async def _enhance_times(engine: Engine, settings: Settings, image: np.ndarray, runs: int) -> list[float]:
    """Seconds per image through the service's Pipeline (batcher, tile extraction and stitching)."""
    pipeline = Pipeline(engine, settings, Metrics())
    times = []
    try:
        for _ in range(runs):
            started = time.perf_counter()
            await pipeline.enhance_pixels(image)
            times.append(time.perf_counter() - started)
    finally:
        await pipeline.close()
    return times


def enhance(
    model_path: str,
    device: str,
    width: int,
    height: int,
    mode: str,
    tile_size: int | None,
    repeats: int,
    memory_budget_mb: int | None = None,
) -> dict[str, Any]:
    """Time ``repeats`` enhancements of a width x height image, tiled or whole.

    Tiled: fixed tiles of ``tile_size``, or with None the service default (cost-aware windows
    within the memory budget on the CPU, fixed 256 px tiles on a GPU); an image that fits one
    window runs whole, as in the service. Whole: one ORT call on the whole (padded) image.
    Every shape is warmed up first, as in a running service that has seen it before: fixed
    tiles by Engine.warm_up, whole images and cost-aware windows (whose shapes follow the
    upload) by one untimed run, reported as ``first_run_s``."""
    return_freed_buffers_to_the_os()  # as `python -m service serve` does, or RSS would measure glibc's caching
    whole = mode == "whole"
    overrides: dict[str, object] = {"tile_size": tile_size} if tile_size else {}
    if memory_budget_mb is not None:
        overrides["memory_budget_mb"] = memory_budget_mb
    if whole:  # one window holding the whole image, never padded to a batch of copies (GPU default)
        overrides = {"tile_size": max(width, height)}
    settings = settings_from(service_env(Path(model_path), device, **overrides))
    engine = Engine(settings, fixed_batch_shapes=False if whole else None)
    check_provider(device, engine.providers)
    image = dark_photo((width, height))
    plan = engine.plan(height, width)
    if whole and not plan.is_whole_image:
        raise ValueError(f"whole-image run of {width}x{height} planned {len(plan.tiles)} tiles")
    base_rss = current_rss_bytes()
    peak_reset = reset_peak_rss()
    first_run_s = None
    if whole or engine.cost_aware:
        first_run_s = asyncio.run(_enhance_times(engine, settings, image, 1))[0]
    else:
        engine.warm_up()
    seconds = asyncio.run(_enhance_times(engine, settings, image, repeats))
    window_h, window_w = plan.window_shape
    median_s = float(np.median(seconds))
    return {
        "mode": mode,
        "provider": engine.provider,
        "tiling": "whole" if whole else ("cost-aware" if engine.cost_aware else "fixed"),
        "tile_core": None if whole or engine.cost_aware else engine.tile_core,
        "max_window_pixels": None if whole else engine.max_window_pixels,
        "working_bytes_per_pixel": engine.working_bytes_per_pixel,
        "plan": plan.describe(),
        "window": [window_h, window_w],
        "tiles": len(plan.tiles),
        "batch_limit": engine.batch_limit(window_h, window_w),
        "computed_pixels": plan.computed_pixels,
        "computed_pixel_ratio": plan.computed_pixels / (width * height),
        "first_run_s": first_run_s,
        "seconds": seconds,
        "median_s": median_s,
        "seconds_per_output_megapixel": median_s / (width * height / 1e6),
        "base_rss_bytes": base_rss,
        "peak_counts_from_base": peak_reset,
    }
