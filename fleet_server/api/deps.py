"""Request-scoped dependencies: the context, the caller, role checks."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request

from ..auth import Principal
from ..store.base import Role
from .context import ApiContext


def ctx(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.ctx
    return context


def principal(request: Request, c: ApiContext = Depends(ctx)) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    who = c.auth.principal(token.strip() if scheme.lower() == "bearer" else None)
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
