"""A training run's ``--rollout`` option: checked when the run starts, acted on at its end.

The option is the rollout plan of ``fleetctl rollout create`` written as one
string, so a run that produces a better model can ship it without an operator
at the keyboard::

    canary 10%, waves 50%,100%
    canary 1; waves 25% 50% 100%; pace 100/min; probation 10m; gate accuracy>=0.9

Grammar: a sequence of clauses ``KEY VALUE...``; a key word starts a new
clause, values run to the next key; commas, semicolons and spaces all
separate.  Keys (each at most once, except ``gate``)::

    canary N | N%          waves P% P% ...        pace N/min
    jitter D               probation D            device-timeout D
    offline-grace D        max-failures N         gate METRIC OP NUMBER
    gate-min-samples N     gate-timeout D         gates-allow-no-data
    parent-margin Npt      parent-confidence P%   no-parent-gate
    shadow D               no-auto-rollback

The values are parsed by the rollout API's own parser
(:func:`~fleet_server.api.routes_rollouts.build_plan`), so a run and a manual
rollout accept exactly the same plans and report the same errors.  An option
that does not parse is refused when the run starts (``PlanError``, a 422), not
discovered hours later when the candidate is ready.

The rollout targets the run's participants (within the run's selector): those
devices trained the candidate on their own data and already run its parent.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping, Sequence

from edgefleet_contract.errors import EdgefleetError, PlanError

from ..api.routes_rollouts import RolloutCreate, _placeholder, build_plan
from ..rollouts.artifacts import ResolvedArtifact, as_resolved
from ..rollouts.driver import RolloutDriver
from ..rollouts.plan import MAX_GATE_SAMPLES, RolloutPlan
from ..selector import parse as parse_selector

SINGLE = {
    "canary": "canary",
    "pace": "pace",
    "jitter": "jitter",
    "probation": "probation",
    "device-timeout": "device_timeout",
    "offline-grace": "offline_grace",
    "gate-timeout": "gate_timeout",
    "parent-margin": "parent_margin",
    "parent-confidence": "parent_confidence",
    "shadow": "shadow",
}
COUNTS = {"max-failures": "max_failures", "gate-min-samples": "gate_min_samples"}
FLAGS = {
    "no-auto-rollback": ("auto_rollback", False),
    "gates-allow-no-data": ("gates_allow_no_data", True),
    "no-parent-gate": ("vs_parent", False),
}
KEYS = (*SINGLE, *COUNTS, *FLAGS, "waves", "gate")
MAX_SELECTOR = 8000
"""Longer participant lists fall back to the run's selector alone."""
log = logging.getLogger(__name__)
_SPLIT = re.compile(r"[\s,;]+")


def parse_rollout_option(text: str, target: str) -> RolloutCreate:
    """The rollout request ``text`` describes, for devices matching ``target``."""
    tokens = [t for t in _SPLIT.split(text.strip()) if t]
    if not tokens:
        raise PlanError("--rollout is empty; e.g. 'canary 10%, waves 50%,100%'")
    clauses: list[tuple[str, list[str]]] = []
    for token in tokens:
        key = token.lower()
        if key in KEYS:
            if key != "gate" and any(k == key for k, _ in clauses):
                raise PlanError(f"--rollout {text!r}: {key!r} is given twice")
            clauses.append((key, []))
        elif not clauses:
            raise PlanError(
                f"--rollout {text!r}: expected one of {', '.join(KEYS)} "
                f"at the start, found {token!r}"
            )
        else:
            clauses[-1][1].append(token)
    fields: dict[str, object] = {"artifact": "candidate@0", "target": target}
    gates: list[str] = []
    for key, values in clauses:
        if key in FLAGS:
            if values:
                raise PlanError(f"--rollout: {key} takes no value, not {values[0]!r}")
            name, value = FLAGS[key]
            fields[name] = value
            continue
        if not values:
            raise PlanError(f"--rollout {text!r}: {key!r} needs a value")
        if key == "waves":
            fields["waves"] = ",".join(values)
        elif key == "gate":
            gates.append("".join(values))
        elif len(values) > 1:
            raise PlanError(
                f"--rollout {text!r}: {key!r} takes one value, found {' '.join(values)!r}"
            )
        elif key in COUNTS:
            if not values[0].isdigit():
                raise PlanError(f"--rollout: {key} is a whole number, not {values[0]!r}")
            if key == "gate-min-samples" and not 1 <= int(values[0]) <= MAX_GATE_SAMPLES:
                raise PlanError(
                    f"--rollout: gate-min-samples is from 1 to {MAX_GATE_SAMPLES}, "
                    f"not {values[0]!r} (a fleet without traffic: gates-allow-no-data)"
                )
            fields[COUNTS[key]] = int(values[0])
        else:
            fields[SINGLE[key]] = values[0]
    fields["gates"] = gates
    try:
        body = RolloutCreate.model_validate(fields)
    except ValueError as exc:
        raise PlanError(f"--rollout {text!r}: {exc}") from None
    build_plan(body, _placeholder(), 0)  # every value parses, or a PlanError says which
    return body


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


def release_plan(
    lineage: Mapping[str, object], artifact: ResolvedArtifact, *, seed: int
) -> RolloutPlan | None:
    """The plan for a registered candidate whose run asked for a rollout, else None."""
    option, target = lineage.get("rollout"), lineage.get("target")
    if not isinstance(option, str) or not option.strip():
        return None
    if not isinstance(target, str):
        raise PlanError("the run's lineage carries no target selector to roll out to")
    raw = lineage.get("participants")
    participants = [str(d) for d in raw] if isinstance(raw, list) else []
    body = parse_rollout_option(option, participants_selector(target, participants))
    return build_plan(body, artifact, seed)


def release_candidate(
    driver: RolloutDriver, artifact: object, lineage: Mapping[str, object]
) -> str | None:
    """Start the rollout the run asked for; returns its id (None: none asked, or refused).

    Called once the registry signed the candidate.  A refusal (the participants
    are all in another live rollout, say) is logged: the model stays registered
    and an operator can still roll it out by hand.
    """
    run_id = lineage.get("run_id")
    try:
        resolved = as_resolved(artifact)
        plan = release_plan(lineage, resolved, seed=secrets.randbelow(2**31))
        if plan is None:
            return None
        rollout = driver.create(plan, actor=f"federation:{run_id}")
    except EdgefleetError as exc:
        log.warning("run %s: candidate registered but not rolled out: %s", run_id, exc)
        return None
    log.info("run %s: rollout %s of %s started", run_id, rollout.state.id, resolved.label)
    return rollout.state.id
