"""The web page at ``/``: static files shipped in ``service/web``, served with strict security headers.

No build step and nothing from other origins: the page works on a machine without internet. Its
Content-Security-Policy allows only its own script and stylesheet, ``blob:``/``data:`` images (the
photos it shows) and requests to this service; ``/docs`` keeps FastAPI's defaults.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

WEB_ROOT = Path(__file__).resolve().parent / "web"
STATIC_PREFIX = "/static"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class PageSecurityHeaders:
    """Adds the page's security headers to ``/`` and the static files, and to nothing else."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/" or path.startswith(STATIC_PREFIX + "/")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_web_ui(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files under ``/static``."""
    app.mount(STATIC_PREFIX, StaticFiles(directory=WEB_ROOT), name="static")
    app.add_middleware(PageSecurityHeaders)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_ROOT / "index.html", media_type="text/html; charset=utf-8")
