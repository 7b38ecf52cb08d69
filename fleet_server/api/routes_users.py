"""Users (admins) and API tokens (everyone manages their own; admins all)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from edgefleet_contract.errors import PermissionDenied

from ..auth import Principal, hash_password
from ..store.base import Role
from .context import ApiContext
from .deps import ctx, principal, require

router = APIRouter(tags=["users"])


class UserOut(BaseModel):
    username: str
    role: Role
    created_at: float
    disabled: bool


class UserCreate(BaseModel):
    username: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    role: Role
    password: str = Field(min_length=8, max_length=1024)


class UserPatch(BaseModel):
    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=8, max_length=1024)


class TokenInfo(BaseModel):
    id: str
    username: str
    name: str
    created_at: float
    expires_at: float
    revoked_at: float | None
    last_used: float | None


@router.get("/users", response_model=list[UserOut])
def list_users(
    who: Principal = Depends(require("admin")), c: ApiContext = Depends(ctx)
) -> list[UserOut]:
    return [
        UserOut(username=u.username, role=u.role, created_at=u.created_at, disabled=u.disabled)
        for u in c.store.list_users()
    ]


@router.post("/users", response_model=UserOut, status_code=201)
def create_user(
    body: UserCreate, who: Principal = Depends(require("admin")), c: ApiContext = Depends(ctx)
) -> UserOut:
    c.store.create_user(
        body.username, role=body.role, password_hash=hash_password(body.password), now=c.clock()
    )
    u = c.store.get_user(body.username)
    return UserOut(username=u.username, role=u.role, created_at=u.created_at, disabled=u.disabled)


@router.patch("/users/{username}", response_model=UserOut)
def patch_user(
    username: str,
    body: UserPatch,
    who: Principal = Depends(require("admin")),
    c: ApiContext = Depends(ctx),
) -> UserOut:
    u = c.store.update_user(
        username,
        role=body.role,
        disabled=body.disabled,
        password_hash=hash_password(body.password) if body.password else None,
    )
    return UserOut(username=u.username, role=u.role, created_at=u.created_at, disabled=u.disabled)


@router.get("/tokens", response_model=list[TokenInfo])
def list_tokens(
    who: Principal = Depends(principal), c: ApiContext = Depends(ctx)
) -> list[TokenInfo]:
    owner = None if who.role == "admin" else who.username
    return [
        TokenInfo(**{k: v for k, v in vars(t).items() if k != "token_hash"})
        for t in c.store.list_api_tokens(owner)
    ]


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(
    token_id: str, who: Principal = Depends(principal), c: ApiContext = Depends(ctx)
) -> None:
    mine = {t.id for t in c.store.list_api_tokens(who.username)}
    if token_id not in mine and who.role != "admin":
        raise PermissionDenied("only admins can revoke other users' tokens")
    c.store.revoke_api_token(token_id, c.clock())
