"""The FastAPI application: routes, error rendering, request metrics and the model lifecycle.

The model loads and warms up in the background after start-up, so /healthz answers at once and
/readyz turns 200 only when the first request will be fast. Run it with
``python -m service serve`` or ``uvicorn --factory service.app:create_app``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Literal, TypeVar

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema
from starlette.exceptions import HTTPException

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
from service.imageio import OutputFormat
from service.metrics import Metrics
from service.middleware import RequestMetricsMiddleware, UploadLimitMiddleware
from service.pipeline import Pipeline
from service.settings import Settings
from service.strength import AUTO
from service.web_ui import add_web_ui

Quality = Annotated[int, Field(ge=1, le=100)]
StrengthParameter = Literal["auto"] | Annotated[float, Field(ge=0.0, le=1.0)]
KEEP_GPS_HELP = (
    "Keep the upload's GPS position in the answer's EXIF (default: FRLIE_KEEP_GPS, off). The rest of the EXIF "
    "(camera, dates, exposure) is kept with the orientation reset; the embedded thumbnail is dropped."
)
STRENGTH_HELP = (
    "How much of the model's effect to apply: 'auto' (default: enough to bring the photo to a normal "
    "brightness and no more, full strength for noisy low-light captures; photos that are already bright "
    "come back unchanged) or a number from 0 (the upload unchanged) to 1 (the model output)."
)

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

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(state.load(), name="frlie-model-load")
        try:
            yield
        finally:
            loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)
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
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        code = HTTP_STATUS_CODES.get(error.status_code, "http_error")
        return _error_response(error.status_code, code, error.detail, metrics, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()]
        return _error_response(422, InvalidParameters.code, detail, metrics)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error_response(500, "internal_error", "unexpected server error", metrics)

    @app.post(
        "/enhance",
        summary="Enhance a low-light image",
        response_class=Response,
        responses={**IMAGE_RESPONSE, **ERROR_RESPONSES},
        tags=["enhance"],
    )
    async def enhance(
        request: Request,
        image: Annotated[
            UploadFile,
            File(
                description="JPEG, PNG, WebP, BMP, TIFF, AVIF or HEIC/HEIF image (multipart field `image`); "
                "16-bit PNG and TIFF keep their depth.",
                json_schema_extra={"minLength": 1},
            ),
        ],
        format_field: Annotated[
            OutputFormat | SkipJsonSchema[None],
            Form(
                alias="format",
                description="Output encoding; default: JPEG for JPEG and HEIC input, AVIF for AVIF, PNG otherwise "
                "(16 bits for a 16-bit upload).",
            ),
        ] = None,
        quality_field: Annotated[
            Quality | SkipJsonSchema[None], Form(alias="quality", description="JPEG/WebP/AVIF quality (1-100).")
        ] = None,
        format_query: Annotated[
            OutputFormat | SkipJsonSchema[None],
            Query(alias="format", description="Same as the form field (the form field wins)."),
        ] = None,
        quality_query: Annotated[
            Quality | SkipJsonSchema[None],
            Query(alias="quality", description="Same as the form field (the form field wins)."),
        ] = None,
        strength_field: Annotated[
            StrengthParameter | SkipJsonSchema[None], Form(alias="strength", description=STRENGTH_HELP)
        ] = None,
        strength_query: Annotated[
            StrengthParameter | SkipJsonSchema[None],
            Query(alias="strength", description="Same as the form field (the form field wins)."),
        ] = None,
        keep_gps_field: Annotated[
            bool | SkipJsonSchema[None], Form(alias="keep_gps", description=KEEP_GPS_HELP)
        ] = None,
        keep_gps_query: Annotated[
            bool | SkipJsonSchema[None],
            Query(alias="keep_gps", description="Same as the form field (the form field wins)."),
        ] = None,
    ) -> Response:
        pipeline = state.ready_pipeline()
        with state.admission.slot():
            if image.size is not None and image.size > settings.max_upload_bytes:
                raise PayloadTooLarge(f"the image is {image.size} bytes; the limit is {settings.max_upload_bytes}")
            data = await image.read()
            strength = next((value for value in (strength_field, strength_query) if value is not None), AUTO)
            keep_gps = keep_gps_field if keep_gps_field is not None else keep_gps_query
            work = pipeline.process(
                data,
                format_field or format_query,
                quality_field or quality_query,
                strength,
                admit=state.admission.work,
                keep_gps=keep_gps,
            )
            try:
                async with asyncio.timeout(settings.request_timeout_s):
                    result = await _unless_disconnected(request, work)
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
        return Response(result.data, media_type=result.spec.format.media_type, headers=headers)

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
