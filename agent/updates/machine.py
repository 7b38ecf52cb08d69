"""The update state machine: pure functions over :class:`~.journal.Journal`, no I/O.

    pending → downloading → verifying → staging → self_test → switching → probation → committed
       └──────────────── any error before the switch ────────────────┘→ failed
                                          switching / probation ── error ──→ rolled_back

The rule that makes a power cut harmless: nothing before ``switching`` touches
the active slot, so an interrupted update *before* the switch is simply started
over from ``pending`` — bytes already on disk are kept (a download resumes with
HTTP Range) but everything is verified again.  From ``switching`` on, the new
slot has passed its self-test; a restart there counts like a bootloader's boot
counter: the switch is completed (it is idempotent) and the update gets a fresh
probation window, up to ``max_restarts`` times; after that the device goes
back to the previous slot.

The facade (:mod:`.updater`) does the I/O for each phase and persists every
journal this module returns before acting on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from edgefleet_contract.errors import InstallError, TrustError, UpdateError
from edgefleet_contract.messages import UPDATE_PATH, TargetRef, UpdatePhase

from ..runtime.backends import install_hint
from .journal import Journal

ORDER = UPDATE_PATH
ACTIVE_TOUCHED: frozenset[str] = frozenset({"switching", "probation"})
"""Phases in which the new artifact may already be serving: failure means a revert."""

RecoveryAction = Literal["none", "resume", "switch", "probation", "revert"]


@dataclass(frozen=True)
class Recovery:
    """What to do with a journal found at start-up."""

    journal: Journal
    action: RecoveryAction


def begin(
    ref: TargetRef,
    desired_version: int,
    rollout_id: str | None,
    now: float,
    *,
    probation_s: float,
    max_restarts: int,
) -> Journal:
    return Journal(
        desired_version=desired_version,
        rollout_id=rollout_id,
        ref=ref,
        probation_s=probation_s,
        max_restarts=max_restarts,
        started_at=now,
        updated_at=now,
    )


def advance(journal: Journal, phase: UpdatePhase, now: float, **changes: object) -> Journal:
    """Move one step forward (or stay in the same phase with new progress)."""
    if journal.done:
        raise UpdateError(f"the update is already {journal.phase}; start a new one")
    current, target = ORDER.index(journal.phase), ORDER.index(phase)
    if target not in (current, current + 1):
        raise UpdateError(f"an update cannot go from {journal.phase} to {phase}")
    progress = 1.0 if phase == "committed" else changes.pop("progress", journal.progress)
    return journal.model_copy(
        update={"phase": phase, "progress": progress, "updated_at": now, **changes}
    )


def already_installed(journal: Journal, now: float, **changes: object) -> Journal:
    """The device already runs the verified target: nothing to install, nothing to revert."""
    if journal.phase != "pending":
        raise UpdateError(f"an update in {journal.phase} cannot be skipped")
    return journal.model_copy(
        update={"phase": "committed", "progress": 1.0, "updated_at": now, **changes}
    )


def failure_phase(journal: Journal) -> UpdatePhase:
    """``rolled_back`` once the active slot may have changed (caller reverts), else ``failed``."""
    return "rolled_back" if journal.phase in ACTIVE_TOUCHED else "failed"


def fail(journal: Journal, reason: str, now: float) -> Journal:
    """The terminal journal for an update that failed in its current phase."""
    phase = failure_phase(journal)
    where = f"{journal.phase}: " if not reason.startswith(journal.phase) else ""
    return journal.model_copy(
        update={"phase": phase, "error": (where + reason)[:2000], "updated_at": now}
    )


def recover(journal: Journal, now: float, *, max_attempts: int = 5) -> Recovery:
    """Decide, from the journal alone, how an interrupted update continues after a restart."""
    if journal.done:
        return Recovery(journal, "none")
    if journal.phase in ACTIVE_TOUCHED:
        restarts = journal.restarts + (0 if journal.clean_stop else 1)
        if restarts > journal.max_restarts:
            reason = (
                f"the agent restarted {restarts} times while {journal.ref.name} "
                f"{journal.ref.version} was on probation; going back to the previous version"
            )
            reverted = journal.model_copy(
                update={"restarts": restarts, "error": reason, "updated_at": now}
            )
            return Recovery(reverted, "revert")
        if journal.phase == "switching":
            # The switch may or may not have happened: do it (again); it is idempotent.
            again = journal.model_copy(
                update={"restarts": restarts, "clean_stop": False, "updated_at": now}
            )
            return Recovery(again, "switch")
        resumed = journal.model_copy(
            update={
                "restarts": restarts,
                "clean_stop": False,
                "probation_until": now + journal.probation_s,
                "updated_at": now,
            }
        )
        return Recovery(resumed, "probation")
    attempts = journal.attempts + 1
    if attempts > max_attempts:
        reason = (
            f"gave up after {journal.attempts} interrupted attempts (last in {journal.phase}); "
            "the current version keeps running"
        )
        return Recovery(fail(journal, reason, now), "none")
    restarted = journal.model_copy(
        update={"phase": "pending", "attempts": attempts, "error": None, "updated_at": now}
    )
    return Recovery(restarted, "resume")


def check_target(
    ref: TargetRef, custom: Mapping[str, object], *, hardware: str, runtimes: Sequence[str]
) -> None:
    """Refuse a signed target whose custom fields do not fit the request or this device.

    The fields are signed, so a mismatch is either a server bug or an attempt to
    make the device install one artifact under another's name: both are refused
    before a byte is downloaded.
    """
    if custom.get("kind") != ref.kind:
        raise TrustError(
            f"{ref.target} is signed as kind {custom.get('kind')!r}, but the desired state "
            f"asks for a {ref.kind}"
        )
    for key in ("name", "version"):
        if key in custom and custom[key] != getattr(ref, key):
            raise TrustError(
                f"{ref.target} is signed as {key} {custom[key]!r}, not {getattr(ref, key)!r}"
            )
    runtime = custom.get("runtime")
    if ref.kind == "model" and runtime is not None and runtime not in runtimes:
        raise InstallError(
            f"{ref.target} needs the {runtime!r} runtime, which this device does not have "
            f"(it has {', '.join(runtimes) or 'none'}); not downloading it. To serve it: "
            f"{install_hint(str(runtime))}"
        )
    if ref.kind == "firmware":
        compatible = custom.get("hardware")
        if not isinstance(compatible, list) or hardware not in compatible:
            raise TrustError(
                f"{ref.target} is signed for hardware {compatible!r}; this device is {hardware!r}"
            )


@dataclass(frozen=True)
class HealthCounters:
    """Cumulative inference counters of the serving model (monotonic while it serves)."""

    inferences: int
    errors: int
    crashes: int = 0


def judge_health(
    start: HealthCounters,
    now: HealthCounters,
    *,
    max_error_rate: float,
    min_inferences: int,
) -> str | None:
    """Why the new version is unhealthy since ``start``, or None while it looks fine."""
    crashes = now.crashes - start.crashes
    if crashes > 0:
        return f"the model runtime crashed {crashes} time(s) during probation"
    count = now.inferences - start.inferences
    errors = now.errors - start.errors
    if count >= max(1, min_inferences) and errors / count > max_error_rate:
        return (
            f"inference error rate {errors / count:.1%} ({errors} of {count}) during probation "
            f"is above the {max_error_rate:.1%} limit"
        )
    return None
