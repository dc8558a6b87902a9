"""Where one request's time goes inside the service: decode, plan, tiling, inference, encode.

Runs the service's own modules in the order the pipeline runs them (imageio.decode, the policy's
plan and finish, the tile plan, extract_tile / Engine.run / stitch_tile per batch, imageio.encode),
timing each stage for one model pass at the gain the policy picks,
without HTTP and without concurrency, so the figures are the cost floor of one request.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from service import imageio
from service.engine import Engine
from service.policy import Policy
from service.settings import Settings
from service.tiling import extract_tile, stitch_tile

STAGES = ("decode", "plan", "tiling", "inference", "encode")


@dataclass(frozen=True)
class StageTimes:
    decode_s: float
    plan_s: float  # the policy: reading the upload and deciding (service.policy), then its finish
    tiling_s: float  # window extraction (with padding and uint8 -> float) plus stitching of the cores
    inference_s: float
    encode_s: float
    tiles: int
    batches: int

    @property
    def total_s(self) -> float:
        return self.decode_s + self.plan_s + self.tiling_s + self.inference_s + self.encode_s

    @property
    def overhead_fraction(self) -> float:
        """Share of the request that is not the model."""
        return 1.0 - self.inference_s / self.total_s


def time_request(engine: Engine, settings: Settings, data: bytes) -> StageTimes:
    """One upload through every stage, timed stage by stage."""
    clock = time.perf_counter
    started = clock()
    decoded = imageio.decode(data, settings.max_pixels)
    decode_s = clock() - started
    spec = imageio.choose_output(None, None, decoded)
    started = clock()
    policy = Policy(engine.policy_constants)
    decided = policy.plan(decoded.rgb, lossy=decoded.lossy, grayscale=decoded.grayscale, strength=1.0, passes=1)
    plan_s = clock() - started
    plan = engine.plan(decoded.height, decoded.width)
    output = np.empty((decoded.height, decoded.width, 3), dtype=np.uint8)
    limit = engine.batch_limit(*plan.window_shape)
    tiling_s = inference_s = 0.0
    batches = 0
    for first in range(0, len(plan.tiles), limit):
        group = plan.tiles[first : first + limit]
        started = clock()
        batch = np.zeros((limit if engine.pad_batches else len(group), 3, *plan.window_shape), dtype=np.float32)
        for slot, tile in zip(batch, group, strict=False):
            extract_tile(decoded.rgb, plan, tile, slot, gain=decided.gain)
        tiling_s += clock() - started
        started = clock()
        result = engine.run(batch)
        inference_s += clock() - started
        started = clock()
        for item, tile in zip(result, group, strict=False):
            stitch_tile(output, tile, item)
        tiling_s += clock() - started
        batches += 1
    started = clock()
    policy.finish(decided, output, decoded.rgb)
    plan_s += clock() - started
    started = clock()
    imageio.encode(output, decoded.alpha, decoded.icc_profile, spec)
    encode_s = clock() - started
    return StageTimes(decode_s, plan_s, tiling_s, inference_s, encode_s, len(plan.tiles), batches)


def median_stages(engine: Engine, settings: Settings, data: bytes, repeats: int) -> dict[str, Any]:
    """One warm-up request, then the per-stage median of ``repeats`` requests."""
    time_request(engine, settings, data)
    runs = [time_request(engine, settings, data) for _ in range(repeats)]
    median = StageTimes(
        **{f"{stage}_s": statistics.median(getattr(run, f"{stage}_s") for run in runs) for stage in STAGES},
        tiles=runs[0].tiles,
        batches=runs[0].batches,
    )
    return {
        **{f"{stage}_ms": getattr(median, f"{stage}_s") * 1000 for stage in STAGES},
        "total_ms": median.total_s * 1000,
        "overhead_fraction": median.overhead_fraction,
        "tiles": median.tiles,
        "batches": median.batches,
        "repeats": repeats,
        "runs": [asdict(run) for run in runs],
    }
