"""The records a rollout is made of, and the actions its engine asks the edge to take.

Everything here is plain data that round-trips through JSON, so the store can
save a rollout after every transition and a restarted server rebuilds the very
same engine from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .gates import GateResult

RolloutStatus = Literal[
    "pending",
    "canary",
    "wave",
    "paused",
    "halted",
    "completed",
    "aborted",
    "rolling_back",
    "rolled_back",
]
ACTIVE: frozenset[str] = frozenset(
    {"pending", "canary", "wave", "paused", "halted", "rolling_back"}
)
"""Statuses the driver keeps ticking (a halted rollout may be resumed or rolled back)."""
TERMINAL: frozenset[str] = frozenset({"completed", "aborted", "rolled_back"})

WavePhase = Literal["shadowing", "dispatching", "settling", "probation", "gating", "finishing"]
"""Within a wave: (the canary, when the plan has a shadow step) running the new
version beside the active one until the ``shadow_*`` gates pass; sending at the
set pace, waiting for every device to finish, the probation window, waiting for
the gate figures, and (after the last wave) waiting for devices that were
offline."""

DeviceStatus = Literal[
    "queued",
    "offline",
    "sent",
    "updating",
    "probation",
    "succeeded",
    "failed",
    "reverting",
    "rolled_back",
    "skipped",
]
IN_FLIGHT: frozenset[str] = frozenset({"sent", "updating", "probation"})
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "skipped"})
TOUCHED: frozenset[str] = frozenset({"sent", "updating", "probation", "succeeded", "failed"})
"""Devices whose desired state this rollout changed: exactly those a rollback reverts."""


@dataclass
class DeviceProgress:
    device_id: str
    wave: int
    order: int
    status: DeviceStatus = "queued"
    online: bool = True
    due_at: float | None = None
    sent_at: float | None = None
    finished_at: float | None = None
    desired_version: int | None = None
    """The desired-state version that carried the new artifact to the device."""
    revert_version: int | None = None
    previous: dict[str, Any] | None = None
    """What the device was meant to run before (a TargetRef as JSON), for a rollback."""
    phase: str | None = None
    detail: str = ""
    attempts: int = 0
    health: str | None = None
    """The device's last reported health (``ok``, ``degraded``, ``failed``...)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceProgress:
        return cls(**data)


@dataclass
class RolloutState:
    id: str
    created_at: float
    created_by: str
    ends: list[int]
    """Cumulative device counts per wave (index 0 is the canary)."""
    status: RolloutStatus = "pending"
    wave: int = 0
    phase: WavePhase = "dispatching"
    paused_from: RolloutStatus | None = None
    wave_started_at: float | None = None
    settled_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0
    reason: str = ""
    failure_base: int = 0
    gate_results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per wave (as a string key, for JSON), the last gate evaluation."""
    parent: str | None = None
    """``name@version`` the rollout's devices ran when it started (the champion), if any."""
    gates_checked_at: float | None = None
    """When the current wave's gates were last measured while waiting for data (None: not
    yet); spaces the measurements out instead of querying the store every tick."""
    shadow_started_at: float | None = None
    """When the canary's shadow run began (None: no shadow step, or not yet)."""
    shadow_wave: int | None = None
    """The wave whose shadow step started last (None: none yet, or a state stored before
    shadow steps per wave, whose only shadow step was the canary's)."""
    labels_arrived_at: float | None = None
    """When the champion/challenger gate last saw its label count grow while it waited:
    it keeps waiting while labels keep coming (None: not waiting on labels)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutState:
        return cls(**data)


# ---------------------------------------------------------------- actions ----


@dataclass(frozen=True)
class Dispatch:
    """Set the device's desired state to the rollout's artifact (then call ``delivered``)."""

    device_id: str


@dataclass(frozen=True)
class Shadow:
    """Start (or, ``start`` False, end) running the rollout's artifact in the shadow of the
    active model on ``device_ids``: downloaded and verified as for an install, never
    switched to.  Nothing to report back: the devices' telemetry carries the comparison."""

    device_ids: tuple[str, ...]
    start: bool = True


@dataclass(frozen=True)
class Revert:
    """Set the device's desired state back to ``previous`` (then call ``delivered``)."""

    device_id: str
    previous: dict[str, Any] | None


@dataclass(frozen=True)
class EvaluateGates:
    """Fetch the gate figures of ``device_ids`` over [since, until) and the observations
    behind them; call ``gates_measured``.  Asked again, over a longer window, while a gate
    waits for data."""

    wave: int
    device_ids: tuple[str, ...]
    since: float
    until: float


@dataclass(frozen=True)
class Note:
    """Something worth an entry in the rollout's event log."""

    ts: float
    kind: str
    message: str
    device_id: str | None = None


Action = Dispatch | Shadow | Revert | EvaluateGates | Note


def gate_dicts(results: list[GateResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
