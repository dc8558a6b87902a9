"""The FastAPI application: routes, error rendering, request metrics and the model lifecycle.

The model loads and warms up in the background after start-up, so /healthz answers at once and
/readyz turns 200 only when the first request will be fast. Run it with
``python -m service serve`` or ``uvicorn --factory service.app:create_app``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Route

from service import imageio
from service.admission import MIN_RETRY_AFTER_S, Admission
from service.engine import Engine
from service.errors import (
    HTTP_STATUS_CODES,
    ClientDisconnected,
    InvalidImage,
    InvalidParameters,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    UnsupportedFormat,
)
from service.form import EnhanceForm, enhance_form
from service.imageio import OutputFormat
from service.job_routes import add_job_routes, make_job_store
from service.job_runner import JobRunner
from service.jobs import EnhanceOptions, JobResult
from service.metrics import Metrics
from service.middleware import RequestMetricsMiddleware, UploadLimitMiddleware
from service.pipeline import NO_PROGRESS, Pipeline, Progress
from service.settings import Settings
from service.web_ui import add_web_ui

log = logging.getLogger(__name__)
T = TypeVar("T")

# Room for multipart boundaries and the small form fields on top of the image itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def _package_version() -> str:
    try:
        return version("frlie-serve")
    except PackageNotFoundError:
        return "0+unknown"


class ErrorBody(BaseModel):
    """Every error answer has this shape."""

    error: str
    detail: Any


def _error_response(
    status: int, code: str, detail: Any, metrics: Metrics, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    metrics.errors.labels(code).inc()
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


class ServiceState:
    """The loaded pipeline (or why there is none) and the admission queue."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.admission = Admission(
            settings.queue_size,
            settings.max_queued_pixels,
            settings.request_timeout_s,
            MIN_RETRY_AFTER_S,
            metrics.inflight_requests,
        )
        self.pipeline: Pipeline | None = None
        self.load_error: str | None = None

    async def load(self) -> None:
        """Create the session and warm it up in a worker thread, then start batching."""
        try:
            engine = await asyncio.to_thread(Engine, self.settings)
            await asyncio.to_thread(engine.warm_up)
        except Exception as error:
            log.exception("loading the model failed")
            self.load_error = f"{type(error).__name__}: {error}"
            return
        self.metrics.record_precision(engine.model_version, engine.provider, engine.precision_report)
        self.pipeline = Pipeline(engine, self.settings, self.metrics)
        log.info("ready: model %s on %s", engine.model_version, engine.providers)

    def ready_pipeline(self) -> Pipeline:
        if self.pipeline is None:
            detail = self.load_error or "the model is still loading"
            raise NotReady(detail, MIN_RETRY_AFTER_S)
        return self.pipeline


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has already been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; if the client goes away first, cancel it so its queued tiles are withdrawn."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled from outside, e.g. by the request timeout
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientDisconnected("the client disconnected before the result was ready")
    return task.result()


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at ``path`` (GET and DELETE of /jobs/{id} are two routes)."""
    methods: set[str] = set()
    for route in app.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.match(path):
            methods |= route.methods
    return sorted(methods)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    error.status_code: {"model": ErrorBody, "description": (error.__doc__ or "").strip()}
    for error in (InvalidImage, PayloadTooLarge, UnsupportedFormat, InvalidParameters, Overloaded, RequestTimeout)
}
IMAGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The enhanced image, same size and orientation as the upright input. Headers: "
        "X-Model-Version, X-Execution-Provider, X-Tile-Count, X-Inference-Time-Ms, X-Strength (the strength "
        "applied, 0-1), X-Exposure-Gain (what the upload was multiplied by before the model, 1 for dark "
        "native captures and when the model did not run), X-Digital-Gain (how much brighter the upload "
        "looked than its capture, from its noise; 1 for native captures), X-Tile-Plan (e.g. `whole 400x600` "
        "or `2x5 windows of 1648x1040`), "
        "X-Ensemble-Passes (model runs averaged over flipped copies, FRLIE_SELF_ENSEMBLE; 0 when the model did "
        "not run).",
        "content": {fmt.media_type: {"schema": {"type": "string", "format": "binary"}} for fmt in OutputFormat},
    }
}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; with no argument, settings come from FRLIE_* environment variables."""
    settings = settings or Settings()
    metrics = Metrics()
    state = ServiceState(settings, metrics)
    store = make_job_store(settings)
    worker = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(state.load(), name="frlie-model-load")
        runner = JobRunner(
            store, produce, metrics, lambda: state.pipeline is not None, worker, settings.request_timeout_s
        )
        jobs = asyncio.create_task(runner.run_forever(), name="frlie-jobs")
        app.state.job_runner = runner
        try:
            yield
        finally:
            for task in (jobs, loader):
                task.cancel()
            await asyncio.gather(jobs, loader, return_exceptions=True)
            await store.close()
            if state.pipeline is not None:
                await state.pipeline.close()

    app = FastAPI(
        title="FRLIE Serve",
        version=_package_version(),
        description="Low-light image enhancement (FRLIE) on ONNX Runtime. Upload a dark photo to "
        "`POST /enhance`; large images are processed in exact, seamless tiles and concurrent requests "
        'share batched model calls. Errors are JSON `{"error": code, "detail": ...}`.',
        lifespan=lifespan,
    )
    app.state.service = state
    app.add_middleware(UploadLimitMiddleware, max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    if settings.web_ui:
        add_web_ui(app)

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, error: ServiceError) -> JSONResponse:
        return _error_response(error.status_code, error.code, error.detail, metrics, error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = HTTP_STATUS_CODES.get(error.status_code, "http_error")
        headers = error.headers
        if error.status_code == 405:  # Starlette names only the first matching route's methods
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(app, request.url.path))}
        return _error_response(error.status_code, code, error.detail, metrics, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()]
        return _error_response(422, InvalidParameters.code, detail, metrics)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error_response(500, "internal_error", "unexpected server error", metrics)

    async def produce(data: bytes, options: EnhanceOptions, progress: Progress = NO_PROGRESS) -> JobResult:
        """The one enhancement of /enhance and of every job: admission, pipeline, time limit, headers."""
        pipeline = state.ready_pipeline()
        work = pipeline.process(
            data,
            options.format,
            options.quality,
            options.strength,
            admit=state.admission.work,
            keep_gps=options.keep_gps,
            progress=progress,
        )
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                result = await work
        except TimeoutError:
            raise RequestTimeout(f"not finished within {settings.request_timeout_s:g} s") from None
        headers = {
            "X-Model-Version": pipeline.engine.model_version,
            "X-Execution-Provider": pipeline.engine.provider,
            "X-Tile-Count": str(result.tiles),
            "X-Inference-Time-Ms": f"{result.inference_seconds * 1000:.1f}",
            "X-Strength": f"{result.strength:.3f}",
            "X-Exposure-Gain": f"{result.exposure_gain:.3f}",
            "X-Digital-Gain": f"{result.digital_gain:.2f}",
            "X-Tile-Plan": result.plan,
            "X-Ensemble-Passes": str(result.passes),
        }
        return JobResult(result.data, result.spec.format.media_type, headers)

    async def receive(form: EnhanceForm) -> bytes:
        """The upload's bytes, refused early when its declared size is over the limit."""
        if form.image.size is not None and form.image.size > settings.max_upload_bytes:
            raise PayloadTooLarge(f"the image is {form.image.size} bytes; the limit is {settings.max_upload_bytes}")
        return await form.image.read()

    @app.post(
        "/enhance",
        summary="Enhance a low-light image",
        response_class=Response,
        responses={**IMAGE_RESPONSE, **ERROR_RESPONSES},
        tags=["enhance"],
    )
    async def enhance(request: Request, form: Annotated[EnhanceForm, Depends(enhance_form)]) -> Response:
        state.ready_pipeline()
        with state.admission.slot():
            answer = await _unless_disconnected(request, produce(await receive(form), form.options))
        return Response(answer.data, media_type=answer.media_type, headers=answer.headers)

    async def receive_job(form: EnhanceForm) -> bytes:
        """A job's upload, refused now (as /enhance would refuse it) when its header is not an accepted image."""
        state.ready_pipeline()
        with state.admission.slot():
            data = await receive(form)
            await asyncio.to_thread(imageio.check_upload, data, settings.max_pixels)
            return data

    add_job_routes(app, store, receive_job, lambda job: app.state.job_runner.record(job), metrics)

    @app.get("/healthz", summary="Liveness: the process is up", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get(
        "/readyz",
        summary="Readiness: the model is loaded and warmed up",
        tags=["operations"],
        responses={503: {"model": ErrorBody, "description": "Still loading, or loading failed (see detail)."}},
    )
    async def readyz() -> dict[str, Any]:
        pipeline = state.ready_pipeline()
        return {
            "status": "ready",
            **pipeline.engine.describe(),
            "queued_seconds": state.admission.queued_seconds,
            "settings": settings.public_view(),
        }

    @app.get("/metrics", summary="Prometheus metrics (text format)", tags=["operations"], response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app
