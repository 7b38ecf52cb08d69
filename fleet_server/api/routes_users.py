"""Users (admins) and API tokens (everyone manages their own; admins all).

A disabled or demoted user loses access on the next request (nothing about a
caller is cached), and the last enabled admin cannot be demoted or disabled,
so a fleet can never be locked out of its own user management.  A password
reset, a change of one's own password and disabling or re-enabling a user
revoke every token and console session the user had.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from edgefleet_contract.errors import NotFound, StoreError

from ..auth import MAX_PASSWORD, MIN_PASSWORD, Principal, hash_password
from ..store.base import Role, User
from .context import ApiContext
from .deps import ctx, principal, require
from .routes_auth import issued
from .schemas import Items, items

router = APIRouter(tags=["users"])


class UserOut(BaseModel):
    username: str
    role: Role
    created_at: float
    disabled: bool

    @classmethod
    def of(cls, u: User) -> UserOut:
        """A user as the API shows it: never its password hash."""
        return cls(username=u.username, role=u.role, created_at=u.created_at, disabled=u.disabled)


class UserCreate(BaseModel):
    username: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    role: Role
    password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)


class UserPatch(BaseModel):
    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)


class TokenCreate(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.:@ -]{1,64}$", description="what the token is for")
    ttl_s: int | None = Field(
        default=None,
        ge=60,
        le=400 * 86400,
        description="lifetime; the server default if unset, never over api.max_token_ttl_s",
    )


class TokenCreated(BaseModel):
    token: str = Field(description="the secret: shown once, never stored by the server")
    token_id: str
    name: str
    expires_at: float
    username: str
    role: Role


class TokenInfo(BaseModel):
    id: str
    username: str
    name: str
    created_at: float
    expires_at: float
    revoked_at: float | None
    last_used: float | None


@router.get("/users", response_model=Items[UserOut])
def list_users(
    who: Principal = Depends(require("admin")), c: ApiContext = Depends(ctx)
) -> Items[UserOut]:
    return items([UserOut.of(u) for u in c.store.list_users()])


@router.post("/users", response_model=UserOut, status_code=201)
def create_user(
    body: UserCreate, who: Principal = Depends(require("admin")), c: ApiContext = Depends(ctx)
) -> UserOut:
    c.store.create_user(
        body.username, role=body.role, password_hash=hash_password(body.password), now=c.clock()
    )
    u = c.store.get_user(body.username)
    return UserOut.of(u)


@router.patch("/users/{username}", response_model=UserOut)
def patch_user(
    username: str,
    body: UserPatch,
    who: Principal = Depends(require("admin")),
    c: ApiContext = Depends(ctx),
) -> UserOut:
    before = c.store.get_user(username)
    if body.role not in (None, "admin") or body.disabled:
        _keep_an_admin(c, before)
    u = c.store.update_user(
        username,
        role=body.role,
        disabled=body.disabled,
        password_hash=hash_password(body.password) if body.password else None,
    )
    # A reset password or a (re-)enabled or disabled account starts from no session:
    # a token from before must not outlive the reason it was changed.
    if body.password or (body.disabled is not None and body.disabled != before.disabled):
        c.auth.end_sessions(username)
    return UserOut.of(u)


def _keep_an_admin(c: ApiContext, user: User) -> None:
    if user.role != "admin" or user.disabled:
        return
    others = [u for u in c.store.list_users() if u.role == "admin" and not u.disabled]
    if [u.username for u in others] == [user.username]:
        raise StoreError(
            f"{user.username!r} is the last enabled admin; make another user admin first"
        )


@router.get("/tokens", response_model=Items[TokenInfo])
def list_tokens(
    who: Principal = Depends(principal), c: ApiContext = Depends(ctx)
) -> Items[TokenInfo]:
    owner = None if who.role == "admin" else who.username
    return items(
        [
            TokenInfo(**{k: v for k, v in vars(t).items() if k != "token_hash"})
            for t in c.store.list_api_tokens(owner)
        ]
    )


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def create_token(
    body: TokenCreate, who: Principal = Depends(principal), c: ApiContext = Depends(ctx)
) -> TokenCreated:
    """A token for the caller (for CI jobs and scripts); it carries the caller's role."""
    user = c.store.get_user(who.username)
    secret, record = c.auth.issue_token(
        user, name=body.name, ttl_s=body.ttl_s or c.settings.api.token_ttl_s
    )
    return TokenCreated(token=secret, name=record.name, **issued(record, user))


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(
    token_id: str, who: Principal = Depends(principal), c: ApiContext = Depends(ctx)
) -> None:
    """Revoke a token (yours; admins: anyone's).  It stops working on the next request."""
    mine = {t.id for t in c.store.list_api_tokens(who.username)}
    if token_id not in mine and who.role != "admin":
        raise NotFound(f"you have no API token {token_id!r}")
    c.store.revoke_api_token(token_id, c.clock())
