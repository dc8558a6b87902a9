"""Error types with their HTTP status and stable machine-readable code.

They subclass Starlette's HTTPException so they also pass untouched through FastAPI's body
parsing (which turns any other exception raised while reading the form into a bare 400).
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException


class ServiceError(HTTPException):
    """An expected failure: rendered as ``{"error": code, "detail": ...}`` with ``status_code``."""

    status_code = 500
    code = "internal_error"

    def __init__(self, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=type(self).status_code, detail=detail, headers=headers)


class InvalidImage(ServiceError):
    """The upload is empty, truncated, corrupt or not an image at all."""

    status_code = 400
    code = "invalid_image"


class PayloadTooLarge(ServiceError):
    """Too many bytes in the upload or too many pixels in the image header."""

    status_code = 413
    code = "payload_too_large"


class TooSlowForDeadline(PayloadTooLarge):
    """The image alone would take longer than the request time limit on this deployment."""

    code = "too_slow_for_deadline"


class UnsupportedFormat(ServiceError):
    """A real image, but in a format or pixel layout the service does not accept."""

    status_code = 415
    code = "unsupported_format"


class InvalidParameters(ServiceError):
    """A request parameter is missing or has a bad value (e.g. JPEG output for an image with alpha)."""

    status_code = 422
    code = "invalid_parameters"


class Overloaded(ServiceError):
    """The request queue is full (or the model is still loading); the client should retry later."""

    status_code = 503
    code = "overloaded"

    def __init__(self, detail: Any, retry_after_s: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class NotReady(Overloaded):
    """The model is not loaded and warmed up yet."""

    code = "not_ready"


class JobNotFound(ServiceError):
    """No job has this id: it never existed, or it expired (FRLIE_JOB_TTL_S after its last change)."""

    status_code = 404
    code = "not_found"


class JobNotDone(ServiceError):
    """The job has no image to fetch: it is still queued or running, or it failed or was cancelled."""

    status_code = 409
    code = "job_not_done"


class RequestTimeout(ServiceError):
    """The request did not finish within the configured timeout."""

    status_code = 504
    code = "timeout"


class ClientDisconnected(ServiceError):
    """The client went away before the answer was ready; its queued work was withdrawn."""

    status_code = 499  # nginx's convention; nobody receives it, but metrics record it
    code = "client_disconnected"


# Codes for errors raised by the framework rather than by the service itself.
HTTP_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: PayloadTooLarge.code,
    422: InvalidParameters.code,
}
