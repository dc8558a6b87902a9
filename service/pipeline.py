"""The one path from uploaded bytes to encoded result, shared by the HTTP route, the CLI and
``training evaluate``.

decode (worker thread) -> plan (service.policy) -> admit -> tiles through the batcher (extraction
and stitching happen in the inference thread, straight into one preallocated output) -> finish
(the policy: strength blend, gray) -> encode (worker thread).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

import numpy as np

from service import ensemble, imageio
from service.admission import Cost
from service.batcher import Batcher, BatchReport
from service.engine import Engine
from service.exposure import estimate_exposure
from service.imageio import OutputFormat, OutputSpec
from service.metrics import Metrics
from service.policy import Policy, thumbnail, thumbnail_factor
from service.settings import Settings
from service.strength import AUTO, Strength
from service.tiling import TilePlan, extract_tile, stitch_tile


class Progress(Protocol):
    """Follows one upload's model work as it happens (a job's progress, the folder CLI's bar).

    Progress is counted in model windows (one tile of one pass), not time, so it is exact whatever
    else the machine does; ``planned`` gives the total and the predicted model seconds up front."""

    def planned(self, windows: int, seconds: float | None) -> None:
        """The model work this upload needs, known once its plan is made (before any window runs)."""

    def window_done(self) -> None:
        """One more window's answer is stitched into its output."""


class _NoProgress:
    """Nobody is following: the plain /enhance route and library callers."""

    def planned(self, windows: int, seconds: float | None) -> None:
        pass

    def window_done(self) -> None:
        pass


NO_PROGRESS: Progress = _NoProgress()


@dataclass(frozen=True)
class Enhancement:
    """Enhanced pixels and what it took to make them."""

    pixels: np.ndarray  # H x W x 3, uint8 or float32
    tiles: int
    inference_seconds: float  # total of the ORT calls that carried this image's work
    plan: str = "none"  # how the image was cut into model calls (TilePlan.describe)
    passes: int = 0  # model runs averaged (service.ensemble); 0: the model did not run


@dataclass(frozen=True)
class _Pass:
    """One model pass over an image, and the ORT calls that carried it."""

    pixels: np.ndarray
    tiles: int
    plan: str
    reports: set[BatchReport]


def _model_seconds(reports: set[BatchReport]) -> float:
    """Model time of the ORT calls in ``reports``, each counted once however many items it carried."""
    return sum(report.inference_seconds for report in reports)


@dataclass(frozen=True)
class EnhancedFile:
    """An encoded result, ready to send or write."""

    data: bytes
    spec: OutputSpec
    tiles: int
    inference_seconds: float
    strength: float  # what was applied: 0 is the upload unchanged, 1 the model output
    exposure_gain: float  # what the upload was multiplied by before the model (1: not darkened)
    digital_gain: float  # how much brighter the upload looked than its capture (service.exposure)
    plan: str
    passes: int  # model runs averaged (service.ensemble); 0: the model did not run


class Pipeline:
    """Engine + batcher + image codecs; create it inside the event loop that will use it."""

    def __init__(self, engine: Engine, settings: Settings, metrics: Metrics) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        # The decision around the network belongs to the weights: calibrated, read from the model file.
        self.policy = Policy(engine.policy_constants)
        self.batcher = Batcher(
            engine.run,
            batch_limit=engine.batch_limit,
            max_delay_s=settings.max_batch_delay_s,
            workers=settings.inference_workers,
            pad_batches=engine.pad_batches,
            metrics=metrics,
        )

    async def close(self) -> None:
        await self.batcher.close()

    async def enhance_pixels(
        self,
        image: np.ndarray,
        out_dtype: type = np.uint8,
        gain: float = 1.0,
        passes: int = 1,
        progress: Progress = NO_PROGRESS,
    ) -> Enhancement:
        """Enhance H x W x 3 (uint8, or float32 in [0, 1]) scaled by ``gain`` (exposure normalisation),
        averaging ``passes`` orientations (service.ensemble); uint8 output is rounded, float is raw.

        The passes go to the batcher together, so same-shape ones (the flips) can share ORT calls."""
        if passes == 1:
            single = await self._enhance_once(image, out_dtype, gain, progress)
            return Enhancement(single.pixels, single.tiles, _model_seconds(single.reports), single.plan, 1)
        used = ensemble.orientations(passes)
        runs = deque(
            asyncio.ensure_future(self._enhance_once(o.forward(image), np.float32, gain, progress)) for o in used
        )
        mean, tiles, plan = ensemble.EnsembleMean(), 0, "none"
        reports: set[BatchReport] = set()  # passes that shared an ORT call count its time once
        try:
            for index, orientation in enumerate(used):
                run = await runs.popleft()  # in pass order; each full-size answer is dropped once added
                await asyncio.to_thread(mean.add, run.pixels, orientation)
                tiles, plan = tiles + run.tiles, run.plan if index == 0 else plan
                reports |= run.reports
                del run
        finally:
            for pending_run in runs:  # only left on error or cancellation
                pending_run.cancel()
        pixels = await asyncio.to_thread(mean.result, out_dtype)
        return Enhancement(pixels, tiles, _model_seconds(reports), plan, passes)

    async def _enhance_once(self, image: np.ndarray, out_dtype: type, gain: float, progress: Progress) -> _Pass:
        """One pass of the model over ``image``, tile by tile through the batcher; ``progress`` hears of
        each finished window, and cancelling the caller withdraws the windows not yet run."""
        height, width = image.shape[:2]
        plan = self.engine.plan(height, width)
        output: np.ndarray = np.empty((height, width, 3), dtype=out_dtype)
        shape = (3, *plan.window_shape)
        # Two batches' worth of tiles in the batcher keeps the model busy while finished ones are
        # replaced, and bounds memory no matter how large the image is.
        tiles_in_flight = 2 * self.engine.batch_limit(*plan.window_shape)
        pending: deque[asyncio.Future[BatchReport]] = deque()
        reports: set[BatchReport] = set()
        try:
            for tile in plan.tiles:
                if len(pending) >= tiles_in_flight:
                    reports.add(await pending.popleft())
                    progress.window_done()
                fill = partial(extract_tile, image, plan, tile, gain=gain)
                store = partial(stitch_tile, output, tile)
                pending.append(self.batcher.submit(shape, fill, store))
            while pending:
                reports.add(await pending.popleft())
                progress.window_done()
        finally:
            for future in pending:  # only non-empty on error or cancellation
                future.cancel()
        return _Pass(output, len(plan.tiles), plan.describe(), reports)

    def _model_runs(self, height: int, width: int, passes: int, probe: bool) -> list[tuple[TilePlan, int]]:
        """(plan, runs of it) for an image of this size in ``passes`` passes, after a thumbnail run with ``probe``."""
        runs = [(self.engine.plan(height, width), passes)]
        if probe:
            factor = thumbnail_factor(height, width)
            runs.append((self.engine.plan(height // factor, width // factor), 1))
        return runs

    def cost(self, height: int, width: int, passes: int, probe: bool = False) -> Cost:
        """What enhancing an image of this size in ``passes`` self-ensemble passes (after a thumbnail
        run, with ``probe``) will take, from its plan and the measured throughput."""
        computed = sum(runs * plan.computed_pixels for plan, runs in self._model_runs(height, width, passes, probe))
        return Cost(height * width, self.engine.predicted_seconds(computed))

    def windows(self, height: int, width: int, passes: int, probe: bool = False) -> int:
        """Model windows (tiles of every pass, and of the thumbnail run) the same work is cut into."""
        return sum(runs * len(plan.tiles) for plan, runs in self._model_runs(height, width, passes, probe))

    async def process(
        self,
        data: bytes,
        requested: OutputFormat | None = None,
        quality: int | None = None,
        strength: Strength = AUTO,
        admit: Callable[[Cost], AbstractContextManager[None]] | None = None,
        keep_gps: bool | None = None,
        progress: Progress = NO_PROGRESS,
    ) -> EnhancedFile:
        """decode -> plan (service.policy) -> admit -> run -> finish -> encode, for one uploaded file.

        ``admit`` (the service's admission control) may refuse the work once its size is known; every
        model run of the request happens inside it. ``keep_gps`` keeps the upload's GPS position in the
        answer's EXIF (None: FRLIE_KEEP_GPS). A 16-bit upload runs in float and keeps its depth.
        ``progress`` hears the planned model work and each window as it finishes (service.jobs).
        """
        keep = self.settings.keep_gps if keep_gps is None else keep_gps
        decoded = await asyncio.to_thread(imageio.decode, data, self.settings.max_pixels, keep)
        spec = imageio.choose_output(requested, quality, decoded)
        plan = await asyncio.to_thread(
            self.policy.plan,
            decoded.rgb,
            lossy=decoded.lossy,
            grayscale=decoded.grayscale,
            strength=strength,
            passes=self.engine.ensemble_passes(decoded.height, decoded.width),
        )
        enhancement, applied = Enhancement(decoded.pixels, 0, 0.0), plan.strength  # no model call at all
        if plan.runs_model:
            cost = self.cost(decoded.height, decoded.width, plan.passes, plan.needs_probe)
            with (admit or _admit_everything)(cost):
                progress.planned(
                    self.windows(decoded.height, decoded.width, plan.passes, plan.needs_probe), cost.seconds
                )
                if plan.needs_probe:  # the reading waits for the network's answer to a thumbnail
                    probe = await self.enhance_pixels(thumbnail(decoded.rgb), np.float32, progress=progress)
                    luma = await asyncio.to_thread(estimate_exposure, probe.pixels)
                    plan = self.policy.settle(plan, luma, lossy=decoded.lossy, strength=strength)
                    enhancement = Enhancement(decoded.pixels, probe.tiles, probe.inference_seconds)
                    applied = plan.strength
                if plan.runs_model:
                    full = await self.enhance_pixels(
                        decoded.pixels, decoded.pixels.dtype.type, gain=plan.gain, passes=plan.passes, progress=progress
                    )
                    enhancement = replace(
                        full,
                        tiles=full.tiles + enhancement.tiles,
                        inference_seconds=full.inference_seconds + enhancement.inference_seconds,
                    )
            self.metrics.tiles_per_request.observe(enhancement.tiles)
            self.metrics.pixels_processed.inc(decoded.height * decoded.width)
            if plan.runs_model:
                applied = await asyncio.to_thread(self.policy.finish, plan, enhancement.pixels, decoded.pixels)
        alpha, icc_profile, exif = decoded.alpha, decoded.icc_profile, decoded.exif
        del decoded  # the input pixels are not needed while encoding; free them first
        encoded = await asyncio.to_thread(imageio.encode, enhancement.pixels, alpha, icc_profile, spec, exif)
        return EnhancedFile(
            encoded,
            spec,
            enhancement.tiles,
            enhancement.inference_seconds,
            applied,
            plan.gain,
            plan.reading.digital_gain,
            enhancement.plan,
            enhancement.passes,
        )


def _admit_everything(_: Cost) -> AbstractContextManager[None]:
    """The folder CLI has no deadline and no concurrent clients: everything is admitted."""
    return nullcontext()
