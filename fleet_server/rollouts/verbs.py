"""What operators (and a failed gate) do to a rollout: pause, resume, abort, roll back.

A mixin of :class:`~fleet_server.rollouts.engine.Rollout`, kept apart so the
wave machinery reads on its own; like the rest of the engine it is pure.
"""

from __future__ import annotations

from edgefleet_contract.errors import RolloutError

from .model import (
    TERMINAL,
    TOUCHED,
    Action,
    DeviceProgress,
    Note,
    Revert,
    RolloutState,
    Shadow,
)
from .plan import RolloutPlan


class OperatorVerbs:
    plan: RolloutPlan
    state: RolloutState
    devices: dict[str, DeviceProgress]

    # provided by the engine
    @property
    def failures(self) -> int:
        raise NotImplementedError

    def _touch(self, d: DeviceProgress) -> None:
        raise NotImplementedError

    def _jitter(self, device_id: str) -> float:
        raise NotImplementedError

    def _advance(self, now: float, out: list[Action]) -> None:
        raise NotImplementedError

    def _summary_line(self) -> str:
        raise NotImplementedError

    def _begin_wave(self, wave: int, now: float, out: list[Action]) -> None:
        raise NotImplementedError

    # ---------------------------------------------------- operator actions --

    def pause(self, now: float) -> list[Action]:
        s = self.state
        if s.status not in ("pending", "canary", "wave"):
            raise RolloutError(f"rollout {s.id} is {s.status}; only a running rollout can pause")
        s.paused_from, s.status = s.status, "paused"
        s.updated_at = now
        return [Note(now, "paused", "paused by an operator")]

    def resume(self, now: float) -> list[Action]:
        s = self.state
        out: list[Action] = []
        if s.status == "paused":
            s.status = s.paused_from or "canary"
            s.paused_from = None
            queued = sorted(
                (d for d in self.devices.values() if d.status == "queued"), key=lambda d: d.order
            )
            for i, d in enumerate(queued):
                d.due_at = now + i * self.plan.interval_s + self._jitter(d.device_id)
                self._touch(d)
            out.append(Note(now, "resumed", "resumed by an operator"))
        elif s.status == "halted":
            # The gate must pass again, over a fresh probation (or shadow) window.
            s.status = "canary" if s.wave == 0 else "wave"
            if s.phase == "shadowing":  # this wave's shadow step runs again, from its start
                s.shadow_started_at, s.shadow_wave = None, None
                self._begin_wave(s.wave, now, out)
            else:
                s.phase, s.settled_at = "probation", now
            s.failure_base = self.failures
            out.append(Note(now, "resumed", f"resumed after a halt: {s.reason}"))
        else:
            raise RolloutError(f"rollout {s.id} is {s.status}; only paused or halted ones resume")
        s.updated_at = now
        self._advance(now, out)
        return out

    def abort(self, now: float) -> list[Action]:
        s = self.state
        if s.status in TERMINAL or s.status == "rolling_back":
            raise RolloutError(f"rollout {s.id} is {s.status}; there is nothing to abort")
        for d in self.devices.values():
            if d.status in ("queued", "offline"):
                d.status, d.detail = "skipped", "rollout aborted"
                self._touch(d)
        out: list[Action] = []
        self._stop_shadow(out)
        s.status, s.finished_at, s.updated_at = "aborted", now, now
        out.append(Note(now, "aborted", "aborted by an operator; updated devices keep the update"))
        return out

    def rollback(self, now: float, reason: str = "rolled back by an operator") -> list[Action]:
        s = self.state
        if s.status in ("rolling_back", "rolled_back"):
            raise RolloutError(f"rollout {s.id} is already {s.status}")
        out: list[Action] = []
        self._start_rollback(reason, now, out)
        return out

    def _stop_shadow(self, out: list[Action]) -> None:
        """A rollout ending during its shadow step: the canary stops running the candidate."""
        if self.state.phase == "shadowing" and self.state.shadow_started_at is not None:
            ids = tuple(d.device_id for d in self.devices.values() if d.wave == 0)
            out.append(Shadow(tuple(sorted(ids)), start=False))

    def _check_revert_timeouts(self, now: float, out: list[Action]) -> None:
        for d in self.devices.values():
            late = d.finished_at is not None and now - d.finished_at >= self.plan.device_timeout_s
            if d.status == "reverting" and late:
                d.status, d.detail = "rolled_back", "revert sent; not confirmed in time"
                self._touch(d)

    def _start_rollback(self, reason: str, now: float, out: list[Action]) -> None:
        s = self.state
        s.status, s.reason, s.paused_from = "rolling_back", reason, None
        out.append(Note(now, "rolling_back", reason))
        self._stop_shadow(out)
        for d in sorted(self.devices.values(), key=lambda d: d.order):
            if d.status in TOUCHED:
                d.status, d.finished_at, d.revert_version = "reverting", now, None
                out.append(Revert(d.device_id, d.previous))
            elif d.status in ("queued", "offline"):
                d.status, d.detail = "skipped", "rollout rolled back before its turn"
            else:
                continue
            self._touch(d)
        self._maybe_rolled_back(now, out)

    def _maybe_rolled_back(self, now: float, out: list[Action]) -> None:
        s = self.state
        if s.status != "rolling_back":
            return
        waiting = [d for d in self.devices.values() if d.status == "reverting" and d.online]
        if not waiting:
            s.status, s.finished_at = "rolled_back", now
            out.append(Note(now, "rolled_back", self._summary_line()))
