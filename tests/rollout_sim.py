"""A simulated edge for the rollout engine: devices that answer with update phases.

It plays the driver's part without a store or broker (the engine is I/O-free
by design, so this is its natural test bench); the server-level tests use the
real driver, store, broker and device links.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fleet_server.rollouts.artifacts import ResolvedArtifact
from fleet_server.rollouts.champion import Arm
from fleet_server.rollouts.engine import Candidate, Rollout
from fleet_server.rollouts.gates import EVIDENCE, parse_gate
from fleet_server.rollouts.model import (
    Action,
    DeviceProgress,
    Dispatch,
    EvaluateGates,
    Note,
    Revert,
    Shadow,
)
from fleet_server.rollouts.plan import RolloutPlan, Share

ARTIFACT = ResolvedArtifact(
    kind="model",
    name="digits",
    version="1.3.0",
    target_path="models/digits/1.3.0/digits-1.3.0-onnx-int8.efpkg",
    sha256="ab" * 32,
    length=1234,
)


def plan(**kw: object) -> RolloutPlan:
    base: dict[str, object] = {
        "selector": "all",
        "artifact": ARTIFACT,
        "canary": Share(count=1),
        "waves": (0.25, 0.5, 1.0),
        "pace_per_min": 60.0,
        "jitter_s": 0.0,
        "probation_s": 60.0,
        "gates": (parse_gate("error_rate<0.05"),),
    }
    base.update(kw)
    return RolloutPlan(**base)  # type: ignore[arg-type]


@dataclass
class Sim:
    rollout: Rollout
    fail: set[str] = field(default_factory=set)
    """Devices whose update fails."""
    error_rate: Callable[[int], float] = lambda wave: 0.0
    traffic: Callable[[int], float] = lambda wave: 10.0
    """Observations per second that reach the server from a wave's devices (for every
    traffic metric), counted over the window the engine asks about."""
    now: float = 1000.0
    versions: dict[str, int] = field(default_factory=dict)
    sent: list[tuple[float, str]] = field(default_factory=list)
    reverted: list[str] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    gate_calls: list[EvaluateGates] = field(default_factory=list)
    inflight: dict[str, int] = field(default_factory=dict)
    answer: bool = True
    """Whether devices report progress at all."""
    max_dispatched_share: list[tuple[int, int]] = field(default_factory=list)
    labels: Callable[[EvaluateGates], tuple[Arm, Arm]] | None = None
    """Labelled answers (new version, parent) over the window asked about; None: no feedback."""
    figures: Callable[[EvaluateGates], tuple[dict[str, float | None], dict[str, int]]] | None = None
    """More figures and counts for the window (label-free estimates...)."""
    shadows: list[tuple[float, tuple[str, ...], bool]] = field(default_factory=list)
    """Shadow runs started (True) and ended (False): when, and on which devices."""

    @property
    def canary(self) -> DeviceProgress:
        """The rollout's canary (the one device of wave 0 in these plans)."""
        return next(d for d in self.rollout.devices.values() if d.wave == 0)

    def apply(self, actions: list[Action]) -> None:
        pending = list(actions)
        while pending:
            a = pending.pop(0)
            if isinstance(a, Note):
                self.notes.append(a)
            elif isinstance(a, Dispatch):
                v = self.versions.get(a.device_id, 0) + 1
                self.versions[a.device_id] = v
                self.rollout.delivered(a.device_id, v, self.now, {"kind": "model"})
                self.sent.append((self.now, a.device_id))
                self.inflight[a.device_id] = v
            elif isinstance(a, Shadow):
                self.shadows.append((self.now, a.device_ids, a.start))
            elif isinstance(a, Revert):
                v = self.versions.get(a.device_id, 0) + 1
                self.versions[a.device_id] = v
                self.rollout.delivered(a.device_id, v, self.now)
                self.reverted.append(a.device_id)
                if self.answer:
                    pending += self.rollout.device_report(
                        a.device_id, now=self.now, applied_version=v
                    )
            elif isinstance(a, EvaluateGates):
                self.gate_calls.append(a)
                n = int(self.traffic(a.wave) * max(0.0, a.until - a.since))
                value = self.error_rate(a.wave) if n else None
                values: dict[str, float | None] = {"error_rate": value}
                counts = dict.fromkeys(EVIDENCE, n)
                if self.labels is not None:
                    new, parent = self.labels(a)
                    values["accuracy"], counts["accuracy"] = new.accuracy, new.labels
                    values["parent_accuracy"] = parent.accuracy
                    counts["parent_accuracy"] = parent.labels
                if self.figures is not None:
                    more, more_counts = self.figures(a)
                    values |= more
                    counts |= more_counts
                pending += self.rollout.gates_measured(a.wave, values, self.now, counts)
        s = self.rollout.state
        if s.status in ("canary", "wave"):
            dispatched = sum(1 for d in self.rollout.devices.values() if d.sent_at is not None)
            self.max_dispatched_share.append((dispatched, s.ends[s.wave]))

    def devices_answer(self) -> None:
        for device_id, v in list(self.inflight.items()):
            if not self.answer or not self.rollout.devices[device_id].online:
                continue
            del self.inflight[device_id]
            for phase in ("downloading", "switching", "probation"):
                self.apply(
                    self.rollout.device_report(
                        device_id, now=self.now, phase=phase, update_version=v
                    )
                )
            final = "rolled_back" if device_id in self.fail else "committed"
            self.apply(
                self.rollout.device_report(
                    device_id, now=self.now, phase=final, update_version=v, error="boom"
                )
            )

    def run(self, seconds: float, step: float = 1.0) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += step
            self.apply(self.rollout.tick(self.now))
            self.devices_answer()


def make(
    n: int, *, offline: frozenset[str] = frozenset(), running: str | None = None, **kw: object
) -> Sim:
    """``running``: what every device runs before (the parent of the rollout's version)."""
    candidates = [Candidate(f"d{i:03d}", f"d{i:03d}" not in offline, running) for i in range(n)]
    rollout = Rollout.create("r-test", plan(**kw), candidates, now=1000.0, actor="alice")
    return Sim(rollout)


def silent_canary() -> tuple[Sim, Rollout, DeviceProgress]:
    """A 3-device rollout that has sent its canary the update, to which no device answers."""
    sim = make(3)
    sim.answer = False
    sim.run(2)
    return sim, sim.rollout, sim.canary


def reverting_canary() -> tuple[Sim, Rollout, DeviceProgress]:
    """A silent 3-device rollout whose canary was sent 1.3.0 over 1.2.0 and is then rolled
    back: the revert (desired version 9) is delivered, the device has not answered yet."""
    sim, r, canary = silent_canary()
    r.delivered(
        canary.device_id,
        canary.desired_version or 0,
        sim.now,
        {"kind": "model", "name": "digits", "version": "1.2.0", "target": "t"},
    )
    r.rollback(sim.now)
    r.delivered(canary.device_id, 9, sim.now)
    return sim, r, canary


def gating_canary(**kw: object) -> tuple[Sim, Rollout]:
    """A rollout whose canary committed and whose probation is over: the next tick asks for
    the canary's gate figures (applied by hand in the tests, not by the simulated edge)."""
    sim = make(8, **kw)
    sim.run(2)
    sim.now += sim.rollout.plan.probation_s
    return sim, sim.rollout
