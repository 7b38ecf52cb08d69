"""A training run's ``--rollout`` option: checked when the run starts, acted on at its end.

The option is the rollout plan of ``fleetctl rollout create`` written as one
string, so a run that produces a better model can ship it without an operator
at the keyboard::

    canary 10%, waves 50%,100%
    canary 1; waves 25% 50% 100%; pace 100/min; probation 10m; gate accuracy>=0.9

The run's spec parses it once, into a :class:`~fleet_server.rollouts.plan.PlanSpec`
(:meth:`PlanSpec.parse <fleet_server.rollouts.plan.PlanSpec.parse>` holds the
grammar), so a run and a manual rollout accept exactly the same plans and report
the same errors, and an option that does not parse is refused when the run starts
(``PlanError``, a 422), not discovered hours later when the candidate is ready.

The rollout targets the run's participants (within the run's selector): those
devices trained the candidate on their own data and already run its parent.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence

from edgefleet_contract.errors import EdgefleetError

from ..rollouts.artifacts import ResolvedArtifact
from ..rollouts.driver import RolloutDriver
from ..rollouts.plan import PlanSpec, RolloutPlan, build_plan
from ..selector import parse as parse_selector
from ..store.base import Artifact

MAX_SELECTOR = 8000
"""Longer participant lists fall back to the run's selector alone."""
RELEASE_KEY = "release"
"""Where a candidate's lineage carries the plan its run asked for (a PlanSpec's JSON)."""
log = logging.getLogger(__name__)


def participants_selector(target: str, participants: Sequence[str]) -> str:
    """The run's selector narrowed to the devices that took part."""
    if not participants:
        return target
    ids = " or ".join(f"id:{d}" for d in sorted(participants))
    narrowed = f"({target}) and ({ids})"
    if len(narrowed) > MAX_SELECTOR:
        return target
    parse_selector(narrowed)
    return narrowed


def for_participants(spec: PlanSpec | None, participants: Sequence[str]) -> PlanSpec | None:
    """The run's plan aimed at its participants (None: the run asked for no rollout)."""
    if spec is None:
        return None
    return spec.model_copy(update={"target": participants_selector(spec.target, participants)})


def release_plan(
    spec: PlanSpec | None, artifact: ResolvedArtifact, *, seed: int
) -> RolloutPlan | None:
    """The plan for a registered candidate whose run asked for a rollout, else None."""
    return None if spec is None else build_plan(spec, artifact, seed)


def release_candidate(
    driver: RolloutDriver, artifact: Artifact, lineage: Mapping[str, object]
) -> str | None:
    """Start the rollout the run asked for; returns its id (None: none asked, or refused).

    Called once the registry signed the candidate.  A refusal (the participants
    are all in another live rollout, say) is logged: the model stays registered
    and an operator can still roll it out by hand.
    """
    run_id = lineage.get("run_id")
    resolved = ResolvedArtifact.of(artifact)
    try:
        raw = lineage.get(RELEASE_KEY)
        spec = None if raw is None else PlanSpec.model_validate(raw)
        plan = release_plan(spec, resolved, seed=secrets.randbelow(2**31))
        if plan is None:
            return None
        rollout = driver.create(plan, actor=f"federation:{run_id}")
    except (EdgefleetError, ValueError) as exc:
        log.warning("run %s: candidate registered but not rolled out: %s", run_id, exc)
        return None
    log.info("run %s: rollout %s of %s started", run_id, rollout.state.id, resolved.label)
    return rollout.state.id
