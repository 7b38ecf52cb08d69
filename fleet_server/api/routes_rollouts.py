"""Rollouts: create (operator), list and inspect (viewer), pause/resume/abort/rollback.

Plans are given in the operator's words (``5%``, ``25%,50%,100%``,
``200/min``, ``10m``, ``error_rate<0.01``) and parsed on the server, so the
CLI, the console and scripts share one parser and one set of error messages
(422 with the option and column at fault).  The artifact spec is resolved by
the registry the server was given (``ApiContext.artifacts``); a server without
one, or a spec it does not know, is a 422 naming the spec.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field, StringConstraints

from edgefleet_contract.errors import EdgefleetError, NotFound, PlanError, RolloutError

from ..auth import Principal
from ..rollouts.artifacts import ResolvedArtifact, as_resolved
from ..rollouts.driver import RolloutDriver
from ..rollouts.gates import parse_gate
from ..rollouts.persist import load
from ..rollouts.plan import (
    MAX_GATE_SAMPLES,
    RolloutPlan,
    parse_confidence,
    parse_duration,
    parse_margin,
    parse_pace,
    parse_share,
    parse_waves,
)
from ..rollouts.view import detail, summary
from ..selector import parse as parse_selector
from .context import ApiContext
from .deps import ctx, require
from .schemas import Items, items

router = APIRouter(prefix="/rollouts", tags=["rollouts"])

Short = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class RolloutCreate(BaseModel):
    artifact: Annotated[str, StringConstraints(min_length=1, max_length=300)] = Field(
        description="name@version, e.g. digits@1.3.0 or digits@1.3.0:onnx-int8"
    )
    target: Annotated[str, StringConstraints(min_length=1, max_length=2000)] = Field(
        description="a device selector, e.g. tag:site=berlin and model:digits<1.3"
    )
    canary: Short = "1"
    waves: Short = "100%"
    pace: Short = "60/min"
    jitter: Short = "0s"
    probation: Short = "10m"
    gates: Annotated[
        list[Annotated[str, StringConstraints(max_length=200)]], Field(max_length=20)
    ] = []
    auto_rollback: bool = True
    max_failures: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    device_timeout: Short = "1h"
    offline_grace: Short = "24h"
    seed: Annotated[int, Field(ge=0, le=2**31)] | None = None
    gate_min_samples: Annotated[int, Field(ge=1, le=MAX_GATE_SAMPLES)] = Field(
        20, description="observations a traffic gate needs from the wave before it is judged"
    )
    gate_timeout: Short = Field(
        "30m", description="after probation, how long a gate short of data waits, then fails"
    )
    gates_allow_no_data: bool = Field(
        False, description="a fleet without traffic: a gate with no data passes (says so)"
    )
    vs_parent: bool = Field(
        True,
        description="judge each wave against the version it replaces (champion/challenger)",
    )
    parent_margin: Short = Field(
        "5pt", description="how much worse than its parent the new version may be, in points"
    )
    parent_confidence: Short = Field(
        "95%", description="confidence of the champion/challenger test (and its power)"
    )
    shadow: Short = Field(
        "0s",
        description="before the canary switches, how long it runs the new version beside the "
        "active one (0s: no shadow step); shadow_* gates are judged after it",
    )
    shadow_waves: Literal["canary", "all"] = Field(
        "canary",
        description="which waves get a shadow step before they switch: the canary only, or "
        "every wave",
    )


def _driver(c: ApiContext) -> RolloutDriver:
    driver = c.rollouts
    if driver is None:
        raise RolloutError("this server runs no rollout driver")
    return driver


def _resolve(c: ApiContext, spec: str) -> ResolvedArtifact:
    registry: Any = c.artifacts
    if registry is None:
        raise PlanError(f"no such artifact {spec!r}: this server has no artifact registry")
    try:
        found = registry.resolve(spec)
    except NotFound as exc:
        raise PlanError(f"no such artifact {spec!r}: {exc}") from None
    except EdgefleetError as exc:  # a malformed or ambiguous spec
        raise PlanError(f"artifact {spec!r}: {exc}") from None
    return as_resolved(found)


def build_plan(body: RolloutCreate, artifact: ResolvedArtifact, seed: int) -> RolloutPlan:
    parse_selector(body.target)
    return RolloutPlan(
        selector=body.target,
        artifact=artifact,
        canary=parse_share(body.canary),
        waves=parse_waves(body.waves),
        pace_per_min=parse_pace(body.pace),
        jitter_s=parse_duration(body.jitter, what="--jitter"),
        probation_s=parse_duration(body.probation, what="--probation"),
        gates=tuple(parse_gate(g) for g in body.gates),
        auto_rollback=body.auto_rollback,
        max_failures=body.max_failures,
        device_timeout_s=parse_duration(body.device_timeout, what="--device-timeout"),
        offline_grace_s=parse_duration(body.offline_grace, what="--offline-grace"),
        seed=seed,
        gate_min_samples=body.gate_min_samples,
        gate_timeout_s=parse_duration(body.gate_timeout, what="--gate-timeout"),
        gates_allow_no_data=body.gates_allow_no_data,
        vs_parent=body.vs_parent,
        parent_margin=parse_margin(body.parent_margin),
        parent_confidence=parse_confidence(body.parent_confidence),
        shadow_s=parse_duration(body.shadow, what="--shadow"),
        shadow_every_wave=body.shadow_waves == "all",
    )


@router.post("", status_code=201)
def create_rollout(
    body: RolloutCreate,
    who: Principal = Depends(require("operator")),
    c: ApiContext = Depends(ctx),
) -> dict[str, Any]:
    driver = _driver(c)
    seed = body.seed if body.seed is not None else int(c.clock() * 1000) % 2**31
    # Parse everything before resolving, so a typo is reported before a lookup.
    build_plan(body, _placeholder(), seed)
    plan = build_plan(body, _resolve(c, body.artifact), seed)
    rollout = driver.create(plan, actor=who.username, now=c.clock())
    return detail(rollout, c.store.rollout_events(rollout.state.id))


def _placeholder() -> ResolvedArtifact:
    return ResolvedArtifact("model", "x", "0", "models/x/0/x", "0" * 64, 0)


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
