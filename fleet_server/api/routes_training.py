"""Federated training runs: start, list, status (with per-round numbers), stop.

Reading needs ``viewer``; starting and stopping a run needs ``operator`` (the
audit middleware records both, with the run id).  A server without a training
service (no broker session) answers 503.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from edgefleet_contract.errors import LinkError

from ..auth import Principal
from ..federation.runner import TrainingService
from ..federation.spec import RunSpec
from ..store.training import RoundRecord, TrainingRun
from .context import ApiContext
from .deps import ctx, require
from .schemas import Items, items

router = APIRouter(tags=["training"])


class RoundOut(BaseModel):
    round: int
    loss: float | None
    accuracy: float | None
    participants: list[str]
    failures: dict[str, int]
    rejected: dict[str, int]
    bytes_out: int
    bytes_in: int
    wall_s: float
    ts: float
    failed: dict[str, str] = {}
    """Device -> why it gave no update (its own reason code first)."""
    eligibility: dict[str, int] = {}
    """How many targeted devices were eligible, and how many were left out per reason."""
    evaluation: dict[str, Any] = {}
    """Federated evaluation on the devices' own held-out samples, per device and cohort."""


class RunOut(BaseModel):
    id: str
    status: str
    spec: dict[str, Any]
    created_by: str
    created_at: float
    updated_at: float
    completed_rounds: int
    detail: str
    result: dict[str, Any]
    rounds: list[RoundOut] | None = None


def _service(c: ApiContext) -> TrainingService:
    if c.training is None:
        raise LinkError("this server has no federated training service (no broker session)")
    return c.training


def _run(run: TrainingRun, rounds: list[RoundRecord] | None = None) -> RunOut:
    return RunOut(
        id=run.id,
        status=run.status,
        spec=run.spec,
        created_by=run.created_by,
        created_at=run.created_at,
        updated_at=run.updated_at,
        completed_rounds=run.completed_rounds,
        detail=run.detail,
        result=run.result,
        rounds=None if rounds is None else [RoundOut(**vars(r)) for r in rounds],
    )


@router.post("/training/runs", response_model=RunOut, status_code=201)
def start_run(
    body: RunSpec, who: Principal = Depends(require("operator")), c: ApiContext = Depends(ctx)
) -> RunOut:
    return _run(_service(c).start_run(body, actor=who.username))


@router.get("/training/runs", response_model=Items[RunOut])
def list_runs(
    status: str | None = Query(default=None, pattern=r"^[a-z]{1,16}$"),
    limit: int = Query(default=50, ge=1, le=1000),
    who: Principal = Depends(require("viewer")),
    c: ApiContext = Depends(ctx),
) -> Items[RunOut]:
    return items(
        [_run(r) for r in _service(c).store.list_training_runs(status=status, limit=limit)]
    )


@router.get("/training/runs/{run_id}", response_model=RunOut)
def get_run(
    run_id: str, who: Principal = Depends(require("viewer")), c: ApiContext = Depends(ctx)
) -> RunOut:
    store = _service(c).store
    return _run(store.get_training_run(run_id), store.list_rounds(run_id))


@router.post("/training/runs/{run_id}/stop", response_model=RunOut)
def stop_run(
    run_id: str, who: Principal = Depends(require("operator")), c: ApiContext = Depends(ctx)
) -> RunOut:
    return _run(_service(c).stop_run(run_id))
