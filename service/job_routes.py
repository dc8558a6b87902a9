"""The ``/jobs`` routes: submit an upload as a job, follow its progress, fetch its answer, cancel it.

The store (embedded, or Redis with FRLIE_JOB_STORE) is chosen here from the settings; the work itself
is done by ``service.job_runner`` through the same enhancement as ``POST /enhance``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from service.errors import (
    InvalidImage,
    InvalidParameters,
    JobNotDone,
    JobNotFound,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    UnsupportedFormat,
)
from service.form import EnhanceForm, enhance_form
from service.jobs import Bounds, Job, JobStore, MemoryJobStore
from service.metrics import Metrics
from service.settings import Settings


class JobView(BaseModel):
    """A job as ``GET /jobs/{id}`` shows it."""

    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float
    eta_s: float | None = None
    error: dict[str, Any] | None = None


def job_bounds(settings: Settings) -> Bounds:
    """The store's limits, from existing settings: as many jobs wait as /enhance requests may be in the
    service (FRLIE_QUEUE_SIZE), and results hold at most that many uploads' worth of bytes."""
    return Bounds(settings.queue_size, settings.queue_size * settings.max_upload_bytes, float(settings.job_ttl_s))


def make_job_store(settings: Settings) -> JobStore:
    """Redis when FRLIE_JOB_STORE names it (every replica shares the jobs), else this process's memory."""
    if settings.job_store:
        from service.job_store_redis import RedisJobStore  # redis-py is only imported where it is used

        return RedisJobStore(settings.job_store, job_bounds(settings))
    return MemoryJobStore(job_bounds(settings))


def _responses(*errors: type[ServiceError]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entries of the errors a route answers with."""
    return {error.status_code: {"description": (error.__doc__ or "").strip()} for error in errors}


def _view(job: Job) -> JSONResponse:
    return JSONResponse(job.public())


def add_job_routes(
    app: FastAPI,
    store: JobStore,
    receive: Callable[[EnhanceForm], Awaitable[bytes]],
    on_final: Callable[[Job], None],
    metrics: Metrics,
) -> None:
    """``receive`` reads an upload inside the service's admission slot (as /enhance does); ``on_final``
    counts a job that a DELETE ended."""
    unknown = _responses(JobNotFound)

    async def known(job_id: str) -> Job:
        job = await store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r} (unknown, or expired)")
        return job

    @app.post(
        "/jobs",
        status_code=202,
        summary="Enhance a low-light image later: answers at once with the job to follow",
        response_model=JobView,
        responses={
            202: {"description": "Queued; `Location` is the job's URL."},
            **_responses(InvalidImage, PayloadTooLarge, UnsupportedFormat, InvalidParameters, Overloaded),
        },
        tags=["jobs"],
    )
    async def submit_job(form: Annotated[EnhanceForm, Depends(enhance_form)]) -> JSONResponse:
        data = await receive(form)
        job = await store.submit(data, form.options)
        metrics.jobs.labels("queued").inc()
        body = {"id": job.id, "status": job.status, "progress": job.progress}
        return JSONResponse(body, status_code=202, headers={"Location": f"/jobs/{job.id}"})

    @app.get(
        "/jobs/{job_id}",
        summary="A job's status, progress and ETA",
        response_model=JobView,
        responses=unknown,
        tags=["jobs"],
    )
    async def job_status(job_id: str) -> JSONResponse:
        return _view(await known(job_id))

    @app.get(
        "/jobs/{job_id}/result",
        summary="A done job's image: the same bytes and headers POST /enhance answers with",
        response_class=Response,
        responses=_responses(JobNotFound, JobNotDone),
        tags=["jobs"],
    )
    async def job_result(job_id: str) -> Response:
        result = await store.result(job_id)
        if result is None:
            job = await known(job_id)
            detail: dict[str, Any] = {"status": job.status, "progress": job.progress}
            if job.error:
                detail["error"] = job.error
            raise JobNotDone(detail)
        return Response(result.data, media_type=result.media_type, headers=result.headers)

    @app.delete(
        "/jobs/{job_id}",
        summary="Cancel a job; a running one stops at its next window",
        response_model=JobView,
        responses=unknown,
        tags=["jobs"],
    )
    async def cancel_job(job_id: str) -> JSONResponse:
        before = await known(job_id)
        job = await store.cancel(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r} (unknown, or expired)")
        if before.status != job.status:
            on_final(job)
        return _view(job)
