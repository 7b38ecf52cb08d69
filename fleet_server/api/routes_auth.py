"""Login (password -> API token), logout, password change, and who am I."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from edgefleet_contract.errors import AuthError, NotFound

from ..auth import MAX_PASSWORD, MIN_PASSWORD, SESSION_COOKIE, Principal, csrf_for, hash_password
from ..store.base import ApiToken, User
from .context import ApiContext
from .deps import client_ip, ctx, principal
from .problems import problem

router = APIRouter(prefix="/auth", tags=["auth"])


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    token_name: str = Field(default="fleetctl", min_length=1, max_length=64)
    session: bool = Field(
        default=False, description="console login: set an HttpOnly session cookie instead"
    )


class PasswordChange(BaseModel):
    current_password: str = Field(min_length=1, max_length=MAX_PASSWORD)
    new_password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)


class TokenOut(BaseModel):
    token: str | None = Field(default=None, description="absent for cookie sessions")
    csrf_token: str | None = Field(default=None, description="send as X-CSRF-Token")
    token_id: str
    expires_at: float
    username: str
    role: str


class Me(BaseModel):
    username: str
    role: str


@router.post("/login", response_model=TokenOut)
def login(
    body: LoginRequest, request: Request, c: ApiContext = Depends(ctx)
) -> JSONResponse | TokenOut:
    # By source address only: a username key would let anyone lock its owner out.
    keys = (f"ip:{client_ip(request)}",)
    wait = c.throttle.retry_after(*keys)
    request.state.actor = _audited_name(c, body.username)
    if wait > 0:
        response = problem(
            429, "Too many attempts", f"too many failed logins; try again in {int(wait) + 1} s"
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    try:
        user = c.auth.check_password(body.username, body.password)
    except AuthError:
        c.throttle.failed(*keys)
        raise
    c.throttle.succeeded(*keys)
    if body.session:
        secret, record = c.auth.issue_token(
            user, name="console", ttl_s=c.settings.api.session_ttl_s
        )
        response = JSONResponse(
            TokenOut(csrf_token=csrf_for(secret), **issued(record, user)).model_dump()
        )
        response.set_cookie(
            SESSION_COOKIE,
            secret,
            max_age=int(c.settings.api.session_ttl_s),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response
    secret, record = c.auth.issue_token(
        user, name=body.token_name, ttl_s=c.settings.api.token_ttl_s
    )
    return TokenOut(token=secret, **issued(record, user))


def issued(record: ApiToken, user: User) -> dict[str, Any]:
    """What every answer that hands out a token (a login, a console session, a token for
    a script) says of it besides the secret: its id, its expiry, and whose role it carries."""
    return {
        "token_id": record.id,
        "expires_at": record.expires_at,
        "username": user.username,
        "role": user.role,
    }


def _audited_name(c: ApiContext, username: str) -> str:
    """The login's actor in the audit log: the name of a real user, else ``unknown``.

    A password typed into the user field must not end up in the audit trail.
    """
    try:
        c.store.get_user(username)
    except NotFound:
        return "unknown"
    return username


@router.post("/logout", status_code=204)
def logout(
    response: Response, who: Principal = Depends(principal), c: ApiContext = Depends(ctx)
) -> None:
    if who.token_id is not None:
        c.store.revoke_api_token(who.token_id, c.clock())
    response.delete_cookie(SESSION_COOKIE, path="/")


@router.post("/password", status_code=204)
def change_password(
    body: PasswordChange,
    request: Request,
    response: Response,
    who: Principal = Depends(principal),
    c: ApiContext = Depends(ctx),
) -> Response:
    """Change your own password; every token and session you had ends (log in again)."""
    keys = (f"ip:{client_ip(request)}",)
    wait = c.throttle.retry_after(*keys)
    if wait > 0:
        return problem(429, "Too many attempts", f"try again in {int(wait) + 1} s")
    try:
        c.auth.check_password(who.username, body.current_password)
    except AuthError:
        c.throttle.failed(*keys)
        raise
    c.store.update_user(who.username, password_hash=hash_password(body.new_password))
    c.auth.end_sessions(who.username)
    response.status_code = 204
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/me", response_model=Me)
def me(who: Principal = Depends(principal)) -> Me:
    return Me(username=who.username, role=who.role)
