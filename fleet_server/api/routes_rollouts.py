"""Rollouts: create (operator), list and inspect (viewer), pause/resume/abort/rollback.

Plans are given in the operator's words (``5%``, ``25%,50%,100%``,
``200/min``, ``10m``, ``error_rate<0.01``) and parsed on the server, so the
CLI, the console and scripts share one parser and one set of error messages
(422 with the option and column at fault).  The artifact spec is resolved by
the registry the server was given (``ApiContext.artifacts``); a server without
one, or a spec it does not know, is a 422 naming the spec.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import Field, StringConstraints

from edgefleet_contract.errors import EdgefleetError, NotFound, PlanError, RolloutError

from ..auth import Principal
from ..rollouts.artifacts import ResolvedArtifact
from ..rollouts.driver import RolloutDriver
from ..rollouts.persist import load
from ..rollouts.plan import PlanSpec, build_plan
from ..rollouts.view import detail, summary
from .context import ApiContext
from .deps import ctx, require
from .schemas import Items, items

router = APIRouter(prefix="/rollouts", tags=["rollouts"])


class RolloutCreate(PlanSpec):
    """A rollout request: the plan and the artifact it ships."""

    artifact: Annotated[str, StringConstraints(min_length=1, max_length=300)] = Field(
        description="name@version, e.g. digits@1.3.0 or digits@1.3.0:onnx-int8"
    )


def _driver(c: ApiContext) -> RolloutDriver:
    driver = c.rollouts
    if driver is None:
        raise RolloutError("this server runs no rollout driver")
    return driver


def _resolve(c: ApiContext, spec: str) -> ResolvedArtifact:
    if c.artifacts is None:
        raise PlanError(f"no such artifact {spec!r}: this server has no artifact registry")
    try:
        found = c.artifacts.resolve(spec)
    except NotFound as exc:
        raise PlanError(f"no such artifact {spec!r}: {exc}") from None
    except EdgefleetError as exc:  # a malformed or ambiguous spec
        raise PlanError(f"artifact {spec!r}: {exc}") from None
    return ResolvedArtifact.of(found)


@router.post("", status_code=201)
def create_rollout(
    body: RolloutCreate,
    who: Principal = Depends(require("operator")),
    c: ApiContext = Depends(ctx),
) -> dict[str, Any]:
    driver = _driver(c)
    seed = body.seed if body.seed is not None else int(c.clock() * 1000) % 2**31
    body.check()  # every value parses before the lookup, so a typo is reported first
    plan = build_plan(body, _resolve(c, body.artifact), seed)
    rollout = driver.create(plan, actor=who.username, now=c.clock())
    return detail(rollout, c.store.rollout_events(rollout.state.id))


@router.get("", response_model=Items[dict[str, Any]])
def list_rollouts(
    status: str | None = Query(None, max_length=32, description="only rollouts in this status"),
    limit: int = Query(100, ge=1, le=1000),
    who: Principal = Depends(require("viewer")),
    c: ApiContext = Depends(ctx),
) -> Items[dict[str, Any]]:
    rows = c.store.list_rollouts(statuses=[status] if status else None, limit=limit)
    driver = c.rollouts
    return items([summary(driver.get(r.id) if driver else load(c.store, r.id)) for r in rows])


@router.get("/{rollout_id}")
def get_rollout(
    rollout_id: str,
    events: int = Query(50, ge=0, le=1000),
    who: Principal = Depends(require("viewer")),
    c: ApiContext = Depends(ctx),
) -> dict[str, Any]:
    rollout = _driver(c).get(rollout_id)
    return detail(rollout, c.store.rollout_events(rollout_id, limit=events))


def _act(c: ApiContext, who: Principal, rollout_id: str, verb: str) -> dict[str, Any]:
    rollout = _driver(c).act(rollout_id, verb, actor=who.username, now=c.clock())
    return summary(rollout)


@router.post("/{rollout_id}/pause")
def pause_rollout(
    rollout_id: str, who: Principal = Depends(require("operator")), c: ApiContext = Depends(ctx)
) -> dict[str, Any]:
    return _act(c, who, rollout_id, "pause")


@router.post("/{rollout_id}/resume")
def resume_rollout(
    rollout_id: str, who: Principal = Depends(require("operator")), c: ApiContext = Depends(ctx)
) -> dict[str, Any]:
    return _act(c, who, rollout_id, "resume")


@router.post("/{rollout_id}/abort")
def abort_rollout(
    rollout_id: str, who: Principal = Depends(require("operator")), c: ApiContext = Depends(ctx)
) -> dict[str, Any]:
    return _act(c, who, rollout_id, "abort")


@router.post("/{rollout_id}/rollback")
def rollback_rollout(
    rollout_id: str, who: Principal = Depends(require("operator")), c: ApiContext = Depends(ctx)
) -> dict[str, Any]:
    return _act(c, who, rollout_id, "rollback")
