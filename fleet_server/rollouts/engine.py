"""The rollout state machine: pure, deterministic, driven by events, answering with actions.

No sockets, no store, no clock: every call takes ``now``; jitter comes from a
generator seeded by the plan's seed and the device id, so the same events give
the same actions on every run — and after a restart, because everything the
engine knows is in :class:`RolloutState` and its :class:`DeviceProgress` rows.

Life of a rollout::

    pending -> canary -> wave 1 -> ... -> wave N -> completed
                 |  (pause/resume: paused)    |
                 +-- failed gate / too many failures --> halted --(auto)--> rolling_back
                                                                            -> rolled_back
    abort: from any live status -> aborted (nothing more is sent, nothing reverted)

Within each wave: ``dispatching`` (devices are sent the artifact at the plan's
pace plus jitter; an offline device waits and is retried when it returns),
``settling`` (until every reachable device committed or failed), ``probation``
(the window the gates look at), ``gating`` (waiting for the figures, and, while a
gate has too few observations to be judged, for more of them: re-measured every
:data:`~.shadow.GATE_RECHECK_S` over the growing window until the plan's gate timeout,
when a gate still short of data fails).  A wave
never starts before the previous one's gates passed, and no device beyond the
current wave's cumulative share is ever sent anything.  A canary whose devices
are all offline holds the rollout until one returns: later waves never go out
without canary evidence.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from edgefleet_contract.messages import INSTALLING

from .champion import Arm
from .gates import SHADOW_METRICS, GateResult, evaluate, failed_text, vs_parent
from .model import (
    IN_FLIGHT,
    TOUCHED,
    Action,
    DeviceProgress,
    Dispatch,
    EvaluateGates,
    Note,
    RolloutState,
    gate_dicts,
)
from .plan import RolloutPlan
from .shadow import ShadowStep
from .verbs import OperatorVerbs


@dataclass(frozen=True)
class Candidate:
    """A device the selector chose, as the engine first sees it."""

    device_id: str
    online: bool
    running: str | None = None
    """``name@version`` it reports running (devices already on the artifact are skipped)."""


def champion_of(plan: RolloutPlan, candidates: Sequence[Candidate]) -> str | None:
    """The version the new model replaces: what most of the chosen devices run of the same
    model (ties to the lowest label); None for firmware, or when none runs that model."""
    if plan.artifact.kind != "model":
        return None
    prefix = f"{plan.artifact.name}@"
    counts = Counter(
        c.running
        for c in candidates
        if c.running and c.running.startswith(prefix) and c.running != plan.artifact.label
    )
    if not counts:
        return None
    return min(counts, key=lambda label: (-counts[label], label))


def _arm(accuracy: float | None, labels: int) -> Arm:
    """Counts back from a measured accuracy and the labels behind it."""
    if accuracy is None or labels <= 0:
        return Arm(0, 0)
    return Arm(min(labels, max(0, round(accuracy * labels))), labels)


class Rollout(ShadowStep, OperatorVerbs):
    def __init__(
        self, plan: RolloutPlan, state: RolloutState, devices: Iterable[DeviceProgress]
    ) -> None:
        self.plan = plan
        self.state = state
        self.devices = {d.device_id: d for d in devices}
        self.dirty: set[str] = set()
        """Device rows changed since the owner last saved (the owner clears it)."""

    # ------------------------------------------------------------- create --

    @classmethod
    def create(
        cls,
        rollout_id: str,
        plan: RolloutPlan,
        candidates: Sequence[Candidate],
        *,
        now: float,
        actor: str,
    ) -> Rollout:
        chosen = sorted(candidates, key=lambda c: c.device_id)
        random.Random(plan.seed).shuffle(chosen)
        ends = plan.wave_ends(len(chosen))
        devices = []
        for order, c in enumerate(chosen):
            wave = next(i for i, end in enumerate(ends) if order < end)
            d = DeviceProgress(c.device_id, wave=wave, order=order, online=c.online)
            if c.running == plan.artifact.label:
                d.status, d.detail = "skipped", f"already runs {plan.artifact.label}"
            devices.append(d)
        state = RolloutState(
            id=rollout_id,
            created_at=now,
            created_by=actor,
            ends=ends,
            updated_at=now,
            parent=champion_of(plan, candidates),
        )
        rollout = cls(plan, state, devices)
        rollout.dirty = set(rollout.devices)
        return rollout

    # --------------------------------------------------------------- views --

    @property
    def status(self) -> str:
        return self.state.status

    @property
    def failures(self) -> int:
        return sum(1 for d in self.devices.values() if d.status == "failed")

    def wave_devices(self, wave: int) -> list[DeviceProgress]:
        return sorted((d for d in self.devices.values() if d.wave == wave), key=lambda d: d.order)

    def _touch(self, d: DeviceProgress) -> None:
        self.dirty.add(d.device_id)

    def _jitter(self, device_id: str) -> float:
        if self.plan.jitter_s <= 0:
            return 0.0
        return random.Random(f"{self.plan.seed}:{device_id}").uniform(0, self.plan.jitter_s)

    # -------------------------------------------------------------- events --

    def tick(self, now: float) -> list[Action]:
        s = self.state
        out: list[Action] = []
        if s.status == "pending":
            s.status = "canary"
            out.append(Note(now, "started", f"rolling out {self.plan.artifact.label}"))
            self._begin_wave(0, now, out)
        if s.status in ("canary", "wave"):
            self._check_timeouts(now, out)
            self._advance(now, out)
        elif s.status == "rolling_back":
            self._check_revert_timeouts(now, out)
            self._maybe_rolled_back(now, out)
        s.updated_at = now
        return out

    def device_report(
        self,
        device_id: str,
        *,
        now: float,
        online: bool | None = None,
        phase: str | None = None,
        update_version: int | None = None,
        applied_version: int | None = None,
        error: str | None = None,
        running: str | None = None,
        health: str | None = None,
    ) -> list[Action]:
        """A device's presence or reported state changed.

        ``phase``/``update_version`` come from its ``UpdateReport``;
        ``applied_version`` is the highest desired-state version it applied and
        ``running`` the ``name@version`` it runs (enough on its own for a device
        that applied our version and runs the artifact but sent no update report).
        """
        d = self.devices.get(device_id)
        out: list[Action] = []
        if d is None:
            return out
        if health is not None and health != d.health:
            d.health = health
            self._touch(d)
            if health == "failed" and d.status in ("probation", "succeeded"):
                out.append(Note(now, "device_unhealthy", "reports health failed", device_id))
        if online is not None and online != d.online:
            d.online = online
            self._touch(d)
            if online and d.status == "offline":
                d.status = "queued"
                d.due_at = now + self._jitter(device_id)
                out.append(Note(now, "retry", "back online; queued again", device_id))
        ours = d.desired_version is not None and (update_version or 0) >= d.desired_version
        if d.status in IN_FLIGHT and phase is not None and ours:
            self._on_phase(d, phase, error, now, out)
        elif d.status == "succeeded" and ours and phase in ("failed", "rolled_back"):
            self._on_phase(d, phase, error, now, out)  # it gave up on the version after all
        landed = d.desired_version is not None and (applied_version or 0) >= d.desired_version
        silent = phase is None or not ours
        if d.status in IN_FLIGHT and landed and silent and running == self.plan.artifact.label:
            self._on_phase(d, "committed", None, now, out)
        if d.status == "reverting" and d.revert_version is not None:
            self._on_revert_report(d, now, out, phase, update_version, applied_version, running)
        return out

    def _on_revert_report(
        self,
        d: DeviceProgress,
        now: float,
        out: list[Action],
        phase: str | None,
        update_version: int | None,
        applied_version: int | None,
        running: str | None,
    ) -> None:
        """Reverted once the device runs its previous target again (or, with none known,
        once it applied the revert); a device whose revert itself failed says so."""
        revert = d.revert_version or 0
        if (applied_version or 0) < revert:
            return
        prev = d.previous or {}
        label = (
            f"{prev['name']}@{prev['version']}" if "name" in prev and "version" in prev else None
        )
        settled = (update_version or 0) >= revert and phase in (
            "committed",
            "failed",
            "rolled_back",
        )
        if label is not None and running != label and not settled:
            return
        d.status, d.finished_at = "rolled_back", now
        if label is not None and running != label:
            d.detail = f"the device could not go back to {label} ({phase})"
            out.append(Note(now, "revert_failed", d.detail, d.device_id))
        self._touch(d)
        self._maybe_rolled_back(now, out)

    def delivered(
        self,
        device_id: str,
        desired_version: int,
        now: float,
        previous: Mapping[str, object] | None = None,
    ) -> None:
        """The edge stored and sent the desired state asked for by Dispatch/Revert."""
        d = self.devices[device_id]
        if d.status == "reverting":
            d.revert_version = desired_version
        else:
            d.desired_version = desired_version
            d.previous = dict(previous) if previous is not None else None
        self._touch(d)

    def not_delivered(self, device_id: str, reason: str, now: float) -> list[Action]:
        """The edge could not set the desired state (device deleted, store refused)."""
        d = self.devices[device_id]
        out: list[Action] = []
        if d.status == "reverting":
            d.status, d.detail = "rolled_back", f"revert not delivered: {reason}"
        else:
            d.status, d.detail, d.finished_at = "failed", reason, now
            self._after_failure(now, out)
        self._touch(d)
        return out

    def gates_measured(
        self,
        wave: int,
        values: Mapping[str, float | None],
        now: float,
        samples: Mapping[str, int] | None = None,
    ) -> list[Action]:
        """The figures asked for by ``EvaluateGates``; ``samples`` counts the observations
        behind each traffic metric (see :data:`~.gates.EVIDENCE`)."""
        s = self.state
        out: list[Action] = []
        if s.status not in ("canary", "wave") or s.wave != wave:
            return out
        if s.phase == "shadowing":
            return self._shadow_measured(values, now, samples)
        if s.phase != "gating":
            return out
        figures = dict(values)
        figures["install_success_rate"] = self._install_success(wave)
        results = evaluate(
            [g for g in self.plan.gates if g.metric not in SHADOW_METRICS],
            figures,
            samples,
            min_samples=self.plan.gate_min_samples,
            allow_no_data=self.plan.gates_allow_no_data,
        )
        if self.plan.vs_parent and s.parent is not None and not self._paired_passed():
            results.append(self._vs_parent(s.parent, figures, samples or {}))
            self._note_label_progress(str(wave), results[-1], now)
        judged = self._unless_waiting(wave, results, now, out)
        if judged is None:
            return out
        s.gate_results[str(wave)] = gate_dicts(judged)
        failed = [r for r in judged if not r.passed and not r.waiting]
        if failed:
            self._halt(f"wave {wave} failed its gates: {failed_text(failed)}", now, out)
            return out
        out.append(Note(now, "gates_passed", f"wave {wave} passed its gates"))
        self._next_wave(now, out)
        return out

    def _vs_parent(
        self, parent: str, figures: Mapping[str, float | None], samples: Mapping[str, int]
    ) -> GateResult:
        """Labels where the parent has them; else the label-free estimates, if the parent
        has a trusted one (its calibration and inputs allow it)."""
        plan = self.plan
        new = _arm(figures.get("accuracy"), samples.get("accuracy", 0))
        old = _arm(figures.get("parent_accuracy"), samples.get("parent_accuracy", 0))
        basis = "labels"
        if not old.labels and figures.get("parent_accuracy_estimate") is not None:
            basis = "estimate"
            new = _arm(figures.get("accuracy_estimate"), samples.get("accuracy_estimate", 0))
            old = _arm(
                figures.get("parent_accuracy_estimate"), samples.get("parent_accuracy_estimate", 0)
            )
        return vs_parent(
            parent,
            new,
            old,
            margin=plan.parent_margin,
            confidence=plan.parent_confidence,
            allow_no_data=plan.gates_allow_no_data,
            basis=basis,
        )

    def _next_wave(self, now: float, out: list[Action]) -> None:
        s = self.state
        if s.wave + 1 < len(s.ends):
            s.status = "wave"
            self._begin_wave(s.wave + 1, now, out)
        else:
            s.phase, s.settled_at = "finishing", now
        self._advance(now, out)

    # ------------------------------------------------------------ internal --

    def _begin_wave(self, wave: int, now: float, out: list[Action]) -> None:
        s = self.state
        s.wave, s.phase, s.wave_started_at, s.settled_at = wave, "dispatching", now, None
        s.labels_arrived_at = None
        queued = [d for d in self.wave_devices(wave) if d.status == "queued"]
        for i, d in enumerate(queued):
            d.due_at = now + i * self.plan.interval_s + self._jitter(d.device_id)
            self._touch(d)
        if self._shadows(wave):
            self._start_shadow(now, out)
            return
        name = "canary" if wave == 0 else f"wave {wave}"
        out.append(Note(now, "wave_started", f"{name}: {len(queued)} devices"))

    def _advance(self, now: float, out: list[Action]) -> None:
        s = self.state
        if s.status not in ("canary", "wave"):
            return
        if s.phase == "shadowing":
            self._shadow_due(now, out)
            return
        due = sorted(
            (
                d
                for d in self.devices.values()
                if d.status == "queued" and d.wave <= s.wave and (d.due_at or 0) <= now
            ),
            key=lambda d: (d.due_at or 0, d.order),
        )
        for d in due:
            if d.online:
                d.status, d.sent_at, d.phase = "sent", now, None
                d.attempts += 1
                out.append(Dispatch(d.device_id))
            else:
                d.status = "offline"
                out.append(Note(now, "offline", "offline at its turn; will retry", d.device_id))
            self._touch(d)
        current = self.wave_devices(s.wave)
        if s.phase == "dispatching" and not any(d.status == "queued" for d in current):
            s.phase = "settling"
        if s.phase == "settling" and not any(d.status in IN_FLIGHT for d in current):
            s.phase, s.settled_at = "probation", now
        if s.phase == "probation" and not any(d.status in TOUCHED for d in current):
            if s.wave == 0 and any(d.status == "offline" for d in current):
                return  # no canary evidence yet: wait for a canary device to come back
            # A wave that changed nothing (empty, or all offline) has nothing to watch.
            s.gate_results[str(s.wave)] = []
            self._next_wave(now, out)
            return
        if s.phase == "probation" and now >= (s.settled_at or now) + self.plan.probation_s:
            s.phase, s.gates_checked_at = "gating", None
        if s.phase == "gating" and self._gates_due(now):
            landed = tuple(d.device_id for d in current if d.status == "succeeded")
            out.append(EvaluateGates(s.wave, landed, s.settled_at or now, now))
        if s.phase == "finishing":
            waiting = [d for d in self.devices.values() if d.status in ("queued", "offline")]
            busy = any(d.status in IN_FLIGHT for d in self.devices.values())
            expired = now >= (s.settled_at or now) + self.plan.offline_grace_s
            if not busy and (not waiting or expired):
                for d in waiting:
                    d.status, d.detail = "skipped", "offline for the whole rollout"
                    self._touch(d)
                s.status, s.finished_at = "completed", now
                out.append(Note(now, "completed", self._summary_line()))

    def _on_phase(
        self, d: DeviceProgress, phase: str, error: str | None, now: float, out: list[Action]
    ) -> None:
        d.phase = phase
        self._touch(d)
        if phase in INSTALLING:
            d.status = "updating"
        elif phase == "probation":
            d.status = "probation"
        elif phase == "committed":
            d.status, d.finished_at = "succeeded", now
        elif phase in ("failed", "rolled_back"):
            d.status, d.finished_at = "failed", now
            d.detail = error or f"the device reported {phase}"
            out.append(Note(now, "device_failed", d.detail, d.device_id))
            self._after_failure(now, out)
        if self.state.status in ("canary", "wave"):
            self._advance(now, out)

    def _after_failure(self, now: float, out: list[Action]) -> None:
        s = self.state
        over = self.failures - s.failure_base
        if s.status in ("canary", "wave", "paused") and over > self.plan.max_failures:
            self._halt(
                f"{over} device(s) failed (at most {self.plan.max_failures} allowed)", now, out
            )

    def _check_timeouts(self, now: float, out: list[Action]) -> None:
        for d in self.devices.values():
            late = d.sent_at is not None and now - d.sent_at >= self.plan.device_timeout_s
            if d.status in IN_FLIGHT and d.online and late:
                d.status, d.finished_at = "failed", now
                d.detail = f"no commit within {self.plan.device_timeout_s:g}s"
                self._touch(d)
                out.append(Note(now, "device_failed", d.detail, d.device_id))
                self._after_failure(now, out)

    def _halt(self, reason: str, now: float, out: list[Action]) -> None:
        s = self.state
        s.status, s.reason, s.paused_from = "halted", reason, None
        out.append(Note(now, "halted", reason))
        if self.plan.auto_rollback:
            self._start_rollback(f"automatic rollback: {reason}", now, out)

    def _install_success(self, wave: int) -> float | None:
        done = [d for d in self.wave_devices(wave) if d.status in ("succeeded", "failed")]
        if not done:
            return None
        return sum(1 for d in done if d.status == "succeeded") / len(done)

    def _summary_line(self) -> str:
        counts: dict[str, int] = {}
        for d in self.devices.values():
            counts[d.status] = counts.get(d.status, 0) + 1
        return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no devices"

    def counts(self) -> list[dict[str, int]]:
        """Per wave: devices by status (for status views)."""
        out: list[dict[str, int]] = [{} for _ in self.state.ends]
        for d in self.devices.values():
            bucket = out[d.wave]
            bucket[d.status] = bucket.get(d.status, 0) + 1
        return out
