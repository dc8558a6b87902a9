"""Runs queued jobs on this replica, one at a time, through the same enhancement as ``POST /enhance``.

Every replica runs one ``JobRunner``: it claims the oldest queued job from the store, runs it while
renewing its lease and writing its progress every HEARTBEAT_S, and records the answer or the error.
One job at a time, because one image's windows already keep the model busy; /enhance requests share
the same batcher and admission. A cancelled job (seen at the next heartbeat) is stopped by cancelling
its task, which withdraws the windows it has not run yet. Each runner also reaps leases that lapsed on
replicas that died.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from service.errors import Overloaded, ServiceError
from service.jobs import FINAL_STATUSES, HEARTBEAT_S, LEASE_S, Claimed, EnhanceOptions, Job, JobResult, JobStore
from service.metrics import Metrics
from service.pipeline import Progress

log = logging.getLogger(__name__)
POLL_S = 0.2  # how often an idle runner looks for queued work
REAP_EVERY_S = LEASE_S / 2

Enhance = Callable[[bytes, EnhanceOptions, Progress], Awaitable[JobResult]]


class JobProgress:
    """A job's progress as model windows done / planned (service.pipeline.Progress), and its ETA from the
    service's cost estimate of the windows left. Stays below 1 until the answer is encoded and stored."""

    def __init__(self) -> None:
        self.windows = 0
        self.done = 0
        self.seconds: float | None = None

    def planned(self, windows: int, seconds: float | None) -> None:
        self.windows, self.done, self.seconds = windows, 0, seconds

    def window_done(self) -> None:
        self.done += 1

    @property
    def fraction(self) -> float:
        return min(self.done / self.windows, 0.99) if self.windows else 0.0

    @property
    def eta_s(self) -> float | None:
        return None if self.seconds is None else self.seconds * (1.0 - self.fraction)


class JobRunner:
    """This replica's worker loop over the shared store."""

    def __init__(
        self,
        store: JobStore,
        enhance: Enhance,
        metrics: Metrics,
        ready: Callable[[], bool],
        worker: str,
        busy_wait_limit_s: float,
    ) -> None:
        self.store = store
        self.enhance = enhance
        self.metrics = metrics
        self.ready = ready
        self.worker = worker
        self.busy_wait_limit_s = busy_wait_limit_s  # FRLIE_REQUEST_TIMEOUT_S: how long to retry a crowded service
        self._next_reap = 0.0

    async def run_forever(self) -> None:
        """Claim and run jobs until cancelled; a store error (Redis away) is logged and retried."""
        while True:
            try:
                await self._look_around()
                claimed = await self.store.claim(self.worker) if self.ready() else None
                if claimed is None:
                    await asyncio.sleep(POLL_S)
                    continue
                await self.run_one(claimed)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the job loop failed; retrying")
                await asyncio.sleep(1.0)

    async def run_one(self, claimed: Claimed) -> None:
        """Run one claimed job to its end, heartbeating; stop it if it is cancelled or its lease is lost."""
        job_id = claimed.job.id
        progress = JobProgress()
        task = asyncio.ensure_future(self._attempt(claimed, progress))
        self.metrics.jobs_running.inc()
        try:
            while not (await asyncio.wait({task}, timeout=HEARTBEAT_S))[0]:
                await self._look_around()
                if not await self.store.heartbeat(job_id, self.worker, progress.fraction, progress.eta_s):
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    log.info("job %s stopped: cancelled (or its lease lapsed)", job_id)
                    return
            result, error = None, None
            try:
                result = task.result()
            except ServiceError as failure:
                error = {"error": failure.code, "detail": failure.detail}
            except Exception:
                log.exception("job %s failed", job_id)
                error = {"error": "internal_error", "detail": "unexpected server error"}
            self.record(await self.store.finish(job_id, self.worker, result, error))
        finally:
            if not task.done():  # this replica is stopping: hand the job to another one at once
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await self.store.release(job_id, self.worker)
            self.metrics.jobs_running.dec()

    async def _look_around(self) -> None:
        """Refresh the queue depth gauge and, every REAP_EVERY_S, reap lapsed leases (busy or idle)."""
        self.metrics.jobs_queued.set(await self.store.queued())
        if time.monotonic() >= self._next_reap:
            self._next_reap = time.monotonic() + REAP_EVERY_S
            for job in await self.store.reap():
                log.warning("job %s lost its replica: now %s", job.id, job.status)
                self.record(job)

    async def _attempt(self, claimed: Claimed, progress: JobProgress) -> JobResult:
        """The enhancement; while /enhance traffic fills the admission, wait its Retry-After and try again."""
        give_up = time.monotonic() + self.busy_wait_limit_s
        while True:
            try:
                return await self.enhance(claimed.upload, claimed.options, progress)
            except Overloaded as busy:
                wait = float((busy.headers or {}).get("Retry-After", 1))
                if time.monotonic() + wait > give_up:
                    raise
                await asyncio.sleep(wait)

    def record(self, job: Job) -> None:
        """Count a job that reached a final status here, with how long it took since submission."""
        if job.status in FINAL_STATUSES:
            self.metrics.jobs.labels(job.status).inc()
            self.metrics.job_duration.labels(job.status).observe(max(0.0, time.time() - job.created))
