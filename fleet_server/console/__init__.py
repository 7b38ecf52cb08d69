"""The web console: static pages served by the fleet server's own FastAPI app.

Plain HTML, CSS and JavaScript modules from ``static/`` (no build step, no CDN:
it works on an air-gapped network), talking to the same REST API with the
same session cookie, CSRF header and roles as everything else — the console
holds no privilege of its own, so whatever a page hides from a viewer the API
refuses anyway.

A strict Content-Security-Policy (``'self'`` only) keeps every asset and every
request on this server, and frames are refused (no clickjacking).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from . import routes

__all__ = ["PREFIX", "SECURED", "STATIC", "install"]

STATIC = Path(__file__).parent / "static"
PREFIX = "/console"
SECURED = (PREFIX, "/api/docs")
"""Paths that get the headers below: the console and the API reference page."""
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def install(app: FastAPI) -> None:
    """Serve the console at ``/console/`` and its endpoints under ``/api/v1/console``."""
    app.include_router(routes.router, prefix="/api/v1")
    app.mount(PREFIX, StaticFiles(directory=STATIC, html=True), name="console")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/")

    @app.middleware("http")
    async def headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        path = request.url.path
        if any(path == p or path.startswith(p + "/") for p in SECURED):
            response.headers.update(_HEADERS)
        return response
