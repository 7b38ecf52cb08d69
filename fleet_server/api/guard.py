"""The ASGI layer in front of every route: body size limits and authentication first.

FastAPI reads and parses a request body before it resolves a route's
dependencies, so without this layer an anonymous client could make the
server buffer any body it likes (a missing ``Content-Length`` - a chunked
body - used to count as 0) and get a 422 for it instead of a 401.  Here,
before the application sees the request:

* a declared ``Content-Length`` over the route's limit is answered 413 unread;
* every body is counted as it streams in, and the read that crosses the
  limit fails with 413, so a chunked body is bounded too (what was read is at
  most the limit plus one chunk);
* a request with a body under ``/api/`` is authenticated first, except on the
  few routes whose credential is in the body (:data:`PUBLIC_BODY_PATHS`): a
  missing or bad credential is answered 401 (403 for a failed CSRF check)
  without reading a byte of the body.  The route checks the caller again
  with its role; a test keeps the list equal to the routes that take no caller.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet_contract.errors import AuthError, PermissionDenied

from . import deps, problems
from .context import ApiContext

MAX_BODY = 1024 * 1024
"""No request body the API accepts comes near this; bigger ones are refused."""
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
PUBLIC_BODY_PATHS = frozenset({"/api/v1/auth/login", "/api/v1/enroll", "/api/v1/enroll/renew"})
"""Routes that take a body from anyone: the password, the enrollment token or the
renewal proof in it is the credential."""


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body crosses its limit (FastAPI passes it on as 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit))


class RequestGuard:
    """Pure ASGI middleware: see the module docstring.  ``limit_of(path, method)`` gives
    the body limit of a request; ``context`` authenticates."""

    def __init__(
        self, app: ASGIApp, *, context: ApiContext, limit_of: Callable[[str, str], int]
    ) -> None:
        self.app = app
        self._context = context
        self._limit_of = limit_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_of(scope["path"], scope["method"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _answer(scope, send, 413, "Request too large", _too_large(limit))
            return
        if scope["method"] in _BODY_METHODS and _needs_caller(scope["path"]):
            refusal = await self._authenticate(scope)
            if refusal is not None:
                status, title, detail = refusal
                await _answer(scope, send, status, title, detail)
                return
        await self.app(scope, _counting(receive, limit), send)

    async def _authenticate(self, scope: Scope) -> tuple[int, str, str] | None:
        request = Request(scope)
        try:
            await run_in_threadpool(deps.principal, request, self._context)
        except PermissionDenied as exc:
            return 403, "Forbidden", str(exc)
        except AuthError as exc:
            return 401, "Unauthorized", str(exc)
        return None


def _needs_caller(path: str) -> bool:
    return path.startswith("/api/") and path not in PUBLIC_BODY_PATHS


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            # A malformed length is refused like a huge one: nothing to trust in it.
            return int(text) if text.isdigit() else 1 << 62
    return None


def _counting(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return counted


def _too_large(limit: int) -> str:
    return f"request bodies are limited to {limit} bytes"


async def _answer(scope: Scope, send: Send, status: int, title: str, detail: str) -> None:
    response = problems.problem(status, title, detail)
    response.headers["Connection"] = "close"  # the unread body is not worth draining

    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, nothing, send)
