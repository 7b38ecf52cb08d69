"""The REST API (``/api/v1``): one FastAPI app built from an :class:`ApiContext`.

Every request that changes something is written to the append-only audit log
by one middleware — who (user or device), role, action (the route), target
(path parameters), source IP, outcome (status code) — including refused and
failed attempts.  Bodies are never logged, so no secret reaches the log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from ..store.base import AuditEntry
from . import (
    problems,
    routes_audit,
    routes_auth,
    routes_devices,
    routes_enroll,
    routes_telemetry,
    routes_users,
)
from .context import ApiContext
from .deps import client_ip

__all__ = ["ApiContext", "create_app"]

_MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def create_app(context: ApiContext) -> FastAPI:
    app = FastAPI(
        title="edgefleet fleet server",
        version="1",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.ctx = context
    problems.install(app)
    for module in (
        routes_auth,
        routes_devices,
        routes_enroll,
        routes_telemetry,
        routes_users,
        routes_audit,
    ):
        app.include_router(module.router, prefix="/api/v1")

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["meta"])
    def metrics() -> str:
        """Prometheus text format; unauthenticated like every scrape target (bind it privately)."""
        return context.metrics() if context.metrics else ""

    @app.middleware("http")
    async def audit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        if request.method in _MUTATING and request.url.path.startswith("/api/"):
            await run_in_threadpool(_record, context, request, response.status_code)
        return response

    return app


def _record(context: ApiContext, request: Request, status: int) -> None:
    who = getattr(request.state, "principal", None)
    actor = who.username if who else getattr(request.state, "actor", "anonymous")
    route = request.scope.get("route")
    action = getattr(route, "name", None) or f"{request.method} {request.url.path}"
    params = request.path_params or {}
    target = ",".join(f"{k}={v}" for k, v in sorted(params.items())) or request.url.path
    outcome = "ok" if status < 400 else ("denied" if status in (401, 403, 429) else "failed")
    context.store.append_audit(
        AuditEntry(
            ts=context.clock(),
            actor=str(actor)[:128],
            role=who.role if who else "",
            action=action,
            target=target[:256],
            source_ip=client_ip(request),
            outcome=outcome,
            detail={"status": status, "method": request.method, "path": request.url.path},
        )
    )
