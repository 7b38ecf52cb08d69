"""The audit log, read-only and for admins only: it shows who did what from which
address, which is itself sensitive (and operators are among those it watches).

Filters: ``actor`` today; ``action`` and ``since`` follow once the store offers them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from ..auth import Principal
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
    who: Principal = Depends(require("admin")),
    c: ApiContext = Depends(ctx),
) -> AuditPage:
    page = c.store.list_audit(offset=offset, limit=limit, actor=actor)
    return AuditPage(items=[AuditOut(**vars(e)) for e in page.items], total=page.total)
