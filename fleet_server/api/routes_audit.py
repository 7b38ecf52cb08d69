"""The audit log, read-only and for admins only: it shows who did what from which
address, which is itself sensitive (and operators are among those it watches).

Filters: ``actor``, ``action`` (the route's name, e.g. ``create_rollout``), ``object``
(entries whose object contains it: ``rollout:ro-7``, ``device:cam-1``, ``user:``),
``outcome`` (ok, denied, failed, error) and a time range ``since``/``until`` (epoch s).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from ..auth import Principal
from ..store.base import AuditFilter
from .context import ApiContext
from .deps import ctx, require
from .schemas import MAX_OFFSET

router = APIRouter(prefix="/audit", tags=["audit"])


class AuditOut(BaseModel):
    id: int | None
    ts: float
    actor: str
    role: str
    action: str
    target: str
    source_ip: str
    outcome: str
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditOut]
    total: int


@router.get("", response_model=AuditPage)
def list_audit(
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    limit: int = Query(100, ge=1, le=1000),
    actor: str | None = Query(None, max_length=64),
    action: str | None = Query(None, max_length=64, pattern=r"^[A-Za-z0-9_.:/ -]+$"),
    object_: str | None = Query(None, alias="object", max_length=256),
    outcome: str | None = Query(None, pattern=r"^(ok|denied|failed|error)$"),
    since: float | None = Query(None, ge=0),
    until: float | None = Query(None, ge=0),
    who: Principal = Depends(require("admin")),
    c: ApiContext = Depends(ctx),
) -> AuditPage:
    filters = AuditFilter(action=action, target=object_, outcome=outcome, since=since, until=until)
    page = c.store.list_audit(offset=offset, limit=limit, actor=actor, filters=filters)
    return AuditPage(items=[AuditOut(**vars(e)) for e in page.items], total=page.total)
