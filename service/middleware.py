"""ASGI middleware: request latency metrics, and the upload size limit enforced while receiving."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge
from service.metrics import Metrics


class RequestMetricsMiddleware:
    """Latency by route template (not raw path, to bound label cardinality) and status code."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            self.metrics.request_duration.labels(label, str(status)).observe(time.perf_counter() - started)


class UploadLimitMiddleware:
    """Stop reading a body once it passes the limit (at once if Content-Length already says so).

    The error is raised from ``receive``, i.e. inside the route's form parsing, which FastAPI
    lets HTTPException subclasses escape from; so it is rendered like every other error.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        received = int(declared) if declared.isdigit() else 0

        async def limited_receive() -> Message:
            nonlocal received
            if received > self.max_body_bytes:
                raise PayloadTooLarge(f"the request body is larger than {self.max_body_bytes} bytes")
            message = await receive()
            if message["type"] == "http.request" and not declared:
                received += len(message.get("body", b""))
            return message

        await self.app(scope, limited_receive, send)
