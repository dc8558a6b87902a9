"""Asynchronous jobs: what a job is, the store every replica shares, and the embedded (in-process) store.

A job is one ``POST /enhance`` run later: its upload and form fields wait in a store until a replica
claims it, its progress is written back as the model's windows finish, and its answer (the same bytes
and headers ``/enhance`` gives) waits in the store for the client. The store is the only state a
replica shares with the others, so the same code runs on one process (``MemoryJobStore``) or on many
(``service.job_store_redis.RedisJobStore``, selected by FRLIE_JOB_STORE).

Bounds: at most ``max_queued`` jobs wait; new jobs are refused while finished results hold
``max_result_bytes``; everything expires ``ttl_s`` after its last change. A claimed job holds a lease
that its replica renews while it runs; a job whose lease lapses (the replica died) is run once more
elsewhere, then marked failed, so no job stays ``running`` forever.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

from service.admission import MIN_RETRY_AFTER_S
from service.errors import Overloaded
from service.imageio import OutputFormat
from service.strength import AUTO, Strength

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
FINAL_STATUSES: frozenset[str] = frozenset(("done", "failed", "cancelled"))
LEASE_S = 10.0  # a running job's replica renews its lease every HEARTBEAT_S; a lapsed lease means it died
HEARTBEAT_S = 0.5  # also how often progress is written and a cancellation is noticed
MAX_ATTEMPTS = 2  # runs of one job before a lapsed lease marks it failed (a job may be what kills replicas)
LOST_ERROR = "job_lost"


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class EnhanceOptions:
    """The form fields of ``POST /enhance`` and ``POST /jobs``: kept with a job until it runs."""

    format: OutputFormat | None = None
    quality: int | None = None
    strength: Strength = AUTO
    keep_gps: bool | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EnhanceOptions:
        data = json.loads(text)
        fmt = data.get("format")
        return cls(OutputFormat(fmt) if fmt else None, data.get("quality"), data["strength"], data.get("keep_gps"))


@dataclass(frozen=True)
class JobResult:
    """An encoded answer with the headers ``POST /enhance`` sends with it."""

    data: bytes
    media_type: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Job:
    """A job's public state (``GET /jobs/{id}``) and the bookkeeping the stores keep beside it."""

    id: str
    status: JobStatus = "queued"
    progress: float = 0.0  # model windows done / planned, never falling; 1 when done
    eta_s: float | None = None  # from the service's cost estimate of the remaining windows
    error: dict[str, Any] | None = None  # the JSON body /enhance would have answered with
    created: float = field(default_factory=time.time)
    finished: float | None = None
    attempts: int = 0

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "progress": round(self.progress, 4),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "error": self.error,
        }


@dataclass(frozen=True)
class Claimed:
    """A job a replica has taken to run, with what it needs to run it."""

    job: Job
    options: EnhanceOptions
    upload: bytes


class JobStore(Protocol):
    """Where jobs live; every method is safe to call from many replicas at once."""

    async def submit(self, upload: bytes, options: EnhanceOptions) -> Job:
        """Queue a new job, or raise Overloaded (503) when the queue or the result bytes are full."""

    async def get(self, job_id: str) -> Job | None:
        """The job's state; None when unknown or expired."""

    async def result(self, job_id: str) -> JobResult | None:
        """A done job's answer; None otherwise."""

    async def claim(self, worker: str) -> Claimed | None:
        """Take the oldest queued job and a lease on it for ``worker``; None when nothing waits."""

    async def heartbeat(self, job_id: str, worker: str, progress: float, eta_s: float | None) -> bool:
        """Renew ``worker``'s lease and record progress; False when the job was cancelled or lost."""

    async def finish(self, job_id: str, worker: str, result: JobResult | None, error: dict[str, Any] | None) -> Job:
        """Record the answer (or the error) of ``worker``'s run, unless the job was cancelled or lost."""

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (a final one is left as it is); None when unknown."""

    async def release(self, job_id: str, worker: str) -> None:
        """Give ``worker``'s running job back to the queue, first in line, without spending an attempt
        (the replica is shutting down, the job did nothing wrong)."""

    async def reap(self) -> list[Job]:
        """Re-queue (or fail, past MAX_ATTEMPTS) running jobs whose lease lapsed; the jobs changed."""

    async def queued(self) -> int:
        """Jobs waiting to be claimed."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Bounds:
    """What the store holds at most, from the service's settings (docs/service.md, asynchronous jobs)."""

    max_queued: int  # FRLIE_QUEUE_SIZE
    max_result_bytes: int  # FRLIE_QUEUE_SIZE x FRLIE_MAX_UPLOAD_BYTES
    ttl_s: float  # FRLIE_JOB_TTL_S


def queue_full(queued: int, bounds: Bounds) -> Overloaded:
    """503 for a full queue. The store does not know the queued photos' sizes, so Retry-After is a
    rough half second per job ahead rather than a prediction."""
    wait = max(MIN_RETRY_AFTER_S, math.ceil(HEARTBEAT_S * queued))
    return Overloaded(f"{queued} jobs are already queued (limit {bounds.max_queued}); retry later", wait)


def results_full(held: int, bounds: Bounds) -> Overloaded:
    return Overloaded(
        f"finished results hold {held} bytes (limit {bounds.max_result_bytes}) until fetched or expired; retry later",
        MIN_RETRY_AFTER_S,
    )


def lost_error(attempts: int) -> dict[str, Any]:
    return {
        "error": LOST_ERROR,
        "detail": f"the replica running this job stopped renewing its lease ({LEASE_S:g} s) in each of "
        f"{attempts} attempts; it is not run again, submit it anew",
    }


@dataclass
class _Entry:
    job: Job
    options: EnhanceOptions
    upload: bytes | None
    expires: float
    result: JobResult | None = None
    worker: str | None = None
    lease_until: float = 0.0


class MemoryJobStore:
    """The embedded store (FRLIE_JOB_STORE unset): jobs in this process, lost when it stops."""

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # in submission order: the queue order

    def _expire(self) -> None:
        now = time.monotonic()
        for job_id in [job_id for job_id, entry in self._entries.items() if entry.expires <= now]:
            del self._entries[job_id]

    def _touch(self, entry: _Entry, job: Job) -> Job:
        entry.job, entry.expires = job, time.monotonic() + self.bounds.ttl_s
        return job

    def _live(self, job_id: str) -> _Entry | None:
        self._expire()
        return self._entries.get(job_id)

    async def submit(self, upload: bytes, options: EnhanceOptions) -> Job:
        self._expire()
        queued = await self.queued()
        if queued >= self.bounds.max_queued:
            raise queue_full(queued, self.bounds)
        held = sum(len(entry.result.data) for entry in self._entries.values() if entry.result)
        if held >= self.bounds.max_result_bytes:
            raise results_full(held, self.bounds)
        job = Job(new_job_id())
        self._entries[job.id] = _Entry(job, options, upload, time.monotonic() + self.bounds.ttl_s)
        return job

    async def get(self, job_id: str) -> Job | None:
        entry = self._live(job_id)
        return entry.job if entry else None

    async def result(self, job_id: str) -> JobResult | None:
        entry = self._live(job_id)
        return entry.result if entry else None

    async def claim(self, worker: str) -> Claimed | None:
        self._expire()
        for entry in self._entries.values():
            if entry.job.status == "queued" and entry.upload is not None:
                job = self._touch(entry, replace(entry.job, status="running", attempts=entry.job.attempts + 1))
                entry.worker, entry.lease_until = worker, time.monotonic() + LEASE_S
                return Claimed(job, entry.options, entry.upload)
        return None

    async def heartbeat(self, job_id: str, worker: str, progress: float, eta_s: float | None) -> bool:
        entry = self._live(job_id)
        if entry is None or entry.worker != worker or entry.job.status != "running":
            return False
        entry.lease_until = time.monotonic() + LEASE_S
        self._touch(entry, replace(entry.job, progress=max(progress, entry.job.progress), eta_s=eta_s))
        return True

    async def finish(self, job_id: str, worker: str, result: JobResult | None, error: dict[str, Any] | None) -> Job:
        entry = self._live(job_id)
        if entry is None:
            return Job(job_id, "failed", error=error)
        if entry.worker != worker or entry.job.status != "running":
            return entry.job
        status: JobStatus = "done" if result is not None else "failed"
        progress = 1.0 if result is not None else entry.job.progress
        entry.result, entry.upload = result, None
        return self._touch(
            entry, replace(entry.job, status=status, progress=progress, eta_s=None, error=error, finished=time.time())
        )

    async def cancel(self, job_id: str) -> Job | None:
        entry = self._live(job_id)
        if entry is None:
            return None
        if entry.job.status in FINAL_STATUSES:
            return entry.job
        entry.upload = None
        return self._touch(entry, replace(entry.job, status="cancelled", eta_s=None, finished=time.time()))

    async def release(self, job_id: str, worker: str) -> None:
        entry = self._live(job_id)
        if entry and entry.worker == worker and entry.job.status == "running":
            entry.worker = None
            self._touch(entry, replace(entry.job, status="queued", eta_s=None, attempts=entry.job.attempts - 1))
            self._entries.move_to_end(job_id, last=False)

    async def reap(self) -> list[Job]:
        self._expire()
        now, changed = time.monotonic(), []
        for entry in self._entries.values():
            if entry.job.status == "running" and entry.lease_until < now:
                changed.append(self._touch(entry, _after_lapse(entry.job)))
                if changed[-1].status == "failed":
                    entry.upload = None
        return changed

    async def queued(self) -> int:
        return sum(1 for entry in self._entries.values() if entry.job.status == "queued")

    async def close(self) -> None:
        self._entries.clear()


def _after_lapse(job: Job) -> Job:
    """A running job whose lease lapsed: queued again, or failed once it has had MAX_ATTEMPTS runs."""
    if job.attempts >= MAX_ATTEMPTS:
        return replace(job, status="failed", eta_s=None, error=lost_error(job.attempts), finished=time.time())
    return replace(job, status="queued", progress=job.progress, eta_s=None)
