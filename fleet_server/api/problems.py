"""Errors as RFC 9457 problem details (``application/problem+json``).

Every failure a client sees has a ``title``, a ``status`` and a ``detail`` a
person can act on; validation failures list each bad field.  Unexpected
exceptions are logged with a request id and answered without internals.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from edgefleet_contract.errors import (
    AuthError,
    EdgefleetError,
    EnrollmentError,
    IdentityError,
    LinkError,
    NotFound,
    PermissionDenied,
    PlanError,
    RolloutError,
    SelectorError,
    StoreError,
)

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[Exception], int, str]] = [
    (PermissionDenied, 403, "Forbidden"),
    (AuthError, 401, "Unauthorized"),
    (NotFound, 404, "Not found"),
    (EnrollmentError, 403, "Enrollment refused"),
    (IdentityError, 400, "Bad certificate request"),
    (SelectorError, 422, "Invalid selector"),
    (LinkError, 503, "Broker unavailable"),
    (StoreError, 409, "Conflict"),
    (PlanError, 422, "Invalid rollout plan"),
    (RolloutError, 409, "Conflict"),
    (EdgefleetError, 400, "Bad request"),
]


def problem(
    status: int, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """A problem+json response; 401s carry the ``WWW-Authenticate`` challenge."""
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="edgefleet"'
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra},
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(EdgefleetError)
    async def _edgefleet(request: Request, exc: EdgefleetError) -> JSONResponse:
        for cls, status, title in _STATUS:
            if isinstance(exc, cls):
                return problem(status, title, str(exc))
        return problem(400, "Bad request", str(exc))  # pragma: no cover

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "request", "message": "invalid"}
        return problem(
            422, "Invalid request", f"{first['field']}: {first['message']}", errors=errors
        )

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request_id_of(request)
        log.exception("request %s %s failed (id %s)", request.method, request.url.path, request_id)
        return problem(
            500,
            "Internal error",
            f"the server failed; quote request id {request_id} to an admin",
            headers={"X-Request-ID": request_id},
            request_id=request_id,
        )


def request_id_of(request: Request) -> str:
    """The id the audit middleware gave this request (made here if it never ran)."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = secrets.token_hex(8)
    return str(rid)
