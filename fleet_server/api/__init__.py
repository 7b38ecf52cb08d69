"""The REST API (``/api/v1``): one FastAPI app built from an :class:`ApiContext`.

Every request that changes something is written to the append-only audit log
by one middleware — who (user or device), role, action (the route), target
(path parameters), source IP, outcome, request id — including refused and
failed attempts and requests that crashed.  Bodies are never recorded and the
query string goes through :func:`~fleet_server.auth.redact`, so no secret
reaches the audit trail.

Access decisions, documented once:

* ``/healthz`` and ``/metrics`` are unauthenticated, as scrape targets are by
  convention; they reveal counts, never ids or secrets.  Bind the API to a
  private address or put it behind a proxy that limits ``/metrics``.
* ``/api/v1/enroll`` is unauthenticated at the HTTP level: the one-time token
  (or, for renewal, the current certificate plus a signature) is the credential.
* Reading the audit log needs ``admin``: it shows who did what from where.
* Everything else needs a token or a console session: ``viewer`` reads,
  ``operator`` changes devices, twins and commands, ``admin`` manages users.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from .. import console
from ..auth import redact
from ..store.base import AuditEntry
from . import (
    docs,
    problems,
    routes_artifacts,
    routes_audit,
    routes_auth,
    routes_devices,
    routes_enroll,
    routes_models,
    routes_rollouts,
    routes_telemetry,
    routes_training,
    routes_tuf,
    routes_users,
)
from .audit_object import MAX_BUFFERED, object_of, reads_request, reason_of
from .context import ApiContext
from .deps import client_ip
from .guard import MAX_BODY, RequestGuard

__all__ = ["ApiContext", "create_app"]

log = logging.getLogger(__name__)
_MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def create_app(context: ApiContext) -> FastAPI:
    app = FastAPI(
        title="edgefleet fleet server",
        version="1",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # served from local assets under the console's CSP: see docs.py
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
        routes_training,
        routes_rollouts,
        routes_models,
    ):
        app.include_router(module.router, prefix="/api/v1")
    app.include_router(routes_artifacts.router, prefix="/api/v1")
    app.include_router(routes_tuf.admin, prefix="/api/v1")
    app.include_router(routes_tuf.public)

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["meta"])
    def metrics() -> str:
        """Prometheus text format (unauthenticated, like every scrape target)."""
        return context.metrics() if context.metrics else ""

    # Innermost of the middlewares, so the audit below records what it refuses.
    app.add_middleware(
        RequestGuard, context=context, limit_of=lambda path, method: _limit(path, method, context)
    )
    console.install(app)
    docs.install(app, openapi_url="/api/v1/openapi.json")

    @app.middleware("http")
    async def audit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request_id = problems.request_id_of(request)
        audited = request.method in _MUTATING and request.url.path.startswith("/api/")
        asked = await _read_request(request) if audited else None
        try:
            response = await call_next(request)
        except Exception:
            if audited:
                await run_in_threadpool(_record, context, request, 500)
            raise
        response.headers["X-Request-ID"] = request_id
        if audited:
            response, answer = await _read_answer(response)
            await run_in_threadpool(_record, context, request, response.status_code, answer, asked)
        return response

    return app


def _limit(path: str, method: str, context: ApiContext) -> int:
    """The body limit for this request.

    The one exemption: artifact uploads (``routes_artifacts.UPLOAD_PATHS``)
    carry whole model packages and firmware bundles.  They get their own,
    larger limit (``artifacts.max_upload_bytes``), which the route enforces
    again while streaming.  :class:`~fleet_server.api.guard.RequestGuard` applies
    the limit to every body, with or without a Content-Length.
    """
    if method == "POST" and path in routes_artifacts.UPLOAD_PATHS:
        return context.settings.artifacts.max_upload_bytes
    return MAX_BODY


async def _read_request(request: Request) -> Any:
    """The JSON body of a create the audit names by its request (small bodies only)."""
    size = request.headers.get("content-length", "")
    if not reads_request(request.url.path) or not size.isdigit() or int(size) > MAX_BUFFERED:
        return None
    try:
        return json.loads(await request.body())
    except ValueError:
        return None


async def _read_answer(response: Response) -> tuple[Response, Any]:
    """The JSON a mutating route answered (for the audit), and the response to send on.

    Only small JSON answers are read; anything else passes through untouched.
    """
    kind = response.headers.get("content-type", "")
    size = response.headers.get("content-length", "")
    body_iterator = getattr(response, "body_iterator", None)
    if (
        "json" not in kind
        or not size.isdigit()
        or int(size) > MAX_BUFFERED
        or body_iterator is None
    ):
        return response, None
    body = b"".join([bytes(chunk) async for chunk in body_iterator])
    rebuilt = Response(
        content=body,
        status_code=response.status_code,
        headers=dict(response.headers),
        background=response.background,
    )
    try:
        return rebuilt, json.loads(body)
    except ValueError:
        return rebuilt, None


def _record(
    context: ApiContext, request: Request, status: int, answer: Any = None, asked: Any = None
) -> None:
    who = getattr(request.state, "principal", None)
    actor = who.username if who else getattr(request.state, "actor", "anonymous")
    route = request.scope.get("route")
    action = getattr(route, "name", None) or f"{request.method} {request.url.path}"
    target = object_of(request.url.path, request.path_params or {}, answer, asked)
    if status < 400:
        outcome = "ok"
    elif status in (401, 403, 429):
        outcome = "denied"
    else:
        outcome = "failed" if status < 500 else "error"
    detail: dict[str, object] = {
        "status": status,
        "method": request.method,
        "path": request.url.path,
        "request_id": problems.request_id_of(request),
    }
    if request.query_params:
        detail["query"] = redact(dict(request.query_params))
    reason = reason_of(answer) if status >= 400 else None
    if reason:
        detail["reason"] = redact(reason)
    entry = AuditEntry(
        ts=context.clock(),
        actor=str(redact(str(actor)))[:128],
        role=who.role if who else "",
        action=action,
        target=str(redact(target))[:256],
        source_ip=client_ip(request),
        outcome=outcome,
        detail=detail,
    )
    try:
        context.store.append_audit(entry)
    except Exception:
        # The action itself already happened; say loudly that its record is missing.
        context.audit_failures += 1
        log.exception("could not write the audit entry for %s %s", request.method, action)
