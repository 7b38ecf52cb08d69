"""Request-scoped dependencies: the context, the caller, role checks."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Depends, Request

from edgefleet_contract.errors import PermissionDenied

from ..auth import CSRF_HEADER, SESSION_COOKIE, Principal, csrf_for
from ..store.base import Role
from .context import ApiContext


def ctx(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.ctx
    return context


_SAFE = {"GET", "HEAD", "OPTIONS"}


def principal(request: Request, c: ApiContext = Depends(ctx)) -> Principal:
    """Bearer token (CLI, scripts) or console session cookie (with CSRF check)."""
    header = request.headers.get("Authorization", "")
    scheme, _, bearer = header.partition(" ")
    if scheme.lower() == "bearer" and bearer.strip():
        who = c.auth.principal(bearer.strip())
    else:
        session = request.cookies.get(SESSION_COOKIE)
        who = c.auth.principal(session)
        if request.method not in _SAFE and session is not None:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent, csrf_for(session)):
                request.state.principal = who
                raise PermissionDenied(
                    f"missing or wrong {CSRF_HEADER} header (cross-site request refused)"
                )
    request.state.principal = who
    return who


def require(role: Role) -> Callable[..., Principal]:
    """A dependency that authenticates and checks ``role`` (the audit sees both)."""

    def check(request: Request, who: Principal = Depends(principal)) -> Principal:
        who.require(role)
        return who

    return check


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"
