"""A wave's shadow step, and the wait for gate data it shares with the waves' gates.

A mixin of :class:`~fleet_server.rollouts.engine.Rollout`, kept apart so the
wave machinery reads on its own; like the rest of the engine it is pure.  The
shadow step runs the new version beside the active one until the ``shadow_*``
gates (and, with a parent, the champion/challenger gate on paired labels) pass.
Any gate short of observations waits for more: re-measured every
:data:`GATE_RECHECK_S` until the plan's gate timeout, and the champion/challenger
gate for as long as its labels keep arriving.
"""

from __future__ import annotations

from collections.abc import Mapping

from .champion import Pairs
from .gates import (
    SHADOW_METRICS,
    GateResult,
    evaluate,
    expire,
    failed_text,
    shortfall,
    vs_parent_paired,
)
from .model import (
    Action,
    DeviceProgress,
    EvaluateGates,
    Note,
    RolloutState,
    Shadow,
    gate_dicts,
)
from .plan import RolloutPlan, duration_text

SHADOW_KEY = "shadow"
"""Where the shadow step's gate results are kept beside the waves' (``gate_results``)."""
GATE_RECHECK_S = 5.0
"""While a wave waits for gate data, how often its figures are measured again."""


def shadow_key(wave: int) -> str:
    """Where a wave's shadow step keeps its gate results: ``shadow`` for the canary (as
    before shadow steps per wave), ``shadow-N`` for wave N."""
    return SHADOW_KEY if wave == 0 else f"{SHADOW_KEY}-{wave}"


def _step(wave: int) -> str:
    return "the shadow step" if wave == 0 else f"the shadow step of wave {wave}"


_LABELS_NOTE = "; the parent gate keeps waiting as long as its labels keep arriving"


class ShadowStep:
    plan: RolloutPlan
    state: RolloutState

    # provided by the engine
    def wave_devices(self, wave: int) -> list[DeviceProgress]:
        raise NotImplementedError

    def _halt(self, reason: str, now: float, out: list[Action]) -> None:
        raise NotImplementedError

    def _begin_wave(self, wave: int, now: float, out: list[Action]) -> None:
        raise NotImplementedError

    def _advance(self, now: float, out: list[Action]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------ waiting for data --

    def _paired_passed(self) -> bool:
        """Whether this wave's shadow step already showed, on paired labels, that the new
        version is no worse than its parent (then the wave is not asked again)."""
        shadow = self.state.gate_results.get(shadow_key(self.state.wave)) or []
        return any(
            r.get("metric") == "accuracy_vs_parent" and r.get("passed") and r.get("samples")
            for r in shadow
        )

    def _paired(self, samples: Mapping[str, int]) -> GateResult | None:
        """The champion/challenger gate on the shadow run's paired labels; None when there
        are none (no feedback, or agents from before the paired counts)."""
        s = self.state
        if not self.plan.vs_parent or s.parent is None or not samples.get("shadow_pairs"):
            return None
        pairs = Pairs(
            labelled=samples["shadow_pairs"],
            new_correct=samples.get("shadow_pairs_new_correct", 0),
            parent_correct=samples.get("shadow_pairs_parent_correct", 0),
            discordant=samples.get("shadow_pairs_discordant", 0),
        )
        plan = self.plan
        return vs_parent_paired(
            s.parent, pairs, margin=plan.parent_margin, confidence=plan.parent_confidence
        )

    def _note_label_progress(self, wave: str, result: GateResult, now: float) -> None:
        """Remember when the waiting champion/challenger gate last got more labels: it
        asks for a number of labels and waits for them as long as they keep arriving
        (at a low label rate that is longer than the gate timeout), rather than failing
        an equal model for want of evidence.  A canary whose labels stopped coming still
        fails ``gate_timeout_s`` after the last one."""
        s = self.state
        if not result.waiting:
            s.labels_arrived_at = None
            return
        before = next(
            (r for r in s.gate_results.get(wave) or [] if r.get("metric") == result.metric),
            None,
        )
        seen = int(before.get("samples") or 0) if before is not None else 0
        if (result.samples or 0) > seen:
            s.labels_arrived_at = now

    def _unless_waiting(
        self, wave: int | str, results: list[GateResult], now: float, out: list[Action]
    ) -> list[GateResult] | None:
        """The results to judge; None while a gate waits for data and none failed outright
        (the wait is noted), until the deadline, when the waiting gates fail."""
        judged_bad = any(not r.passed and not r.waiting for r in results)
        if not any(r.waiting for r in results) or judged_bad:
            return results
        if now < (self.gates_deadline or now):
            self._wait_for_data(wave, results, now, out)
            return None
        return expire(results, duration_text(self.plan.gate_timeout_s))

    def _wait_for_data(
        self, wave: int | str, results: list[GateResult], now: float, out: list[Action]
    ) -> None:
        s = self.state
        key = str(wave)
        before = s.gate_results.get(key) or []
        s.gate_results[key] = gate_dicts(results)
        s.gates_checked_at = now
        if not any(r.get("waiting") for r in before):
            within = duration_text(self.plan.gate_timeout_s)
            shadowing = key.startswith(SHADOW_KEY)
            name = _step(self.state.wave) if shadowing else f"wave {wave}"
            after = "the shadow run" if shadowing else "probation"
            out.append(
                Note(
                    now,
                    "gates_waiting",
                    f"{name} is waiting for data: {shortfall(s.gate_results[key])} "
                    f"(gates still short of it {within} after {after} fail"
                    f"{_LABELS_NOTE if any(r.parent_samples for r in results) else ''})",
                )
            )

    @property
    def gates_deadline(self) -> float | None:
        """When the current wave's gates fail for want of data (None: not gating)."""
        s = self.state
        if s.status not in ("canary", "wave", "paused"):
            return None
        if s.phase == "shadowing":
            started = s.shadow_started_at or s.updated_at
            deadline = started + self.plan.shadow_s + self.plan.gate_timeout_s
        elif s.phase != "gating":
            return None
        else:
            settled = s.settled_at if s.settled_at is not None else s.updated_at
            deadline = settled + self.plan.probation_s + self.plan.gate_timeout_s
        if s.labels_arrived_at is not None:
            deadline = max(deadline, s.labels_arrived_at + self.plan.gate_timeout_s)
        return deadline

    def _gates_due(self, now: float) -> bool:
        """First thing in gating; then, while waiting for data, every few seconds and at
        the deadline (so a gate short of data fails on time, not a recheck later)."""
        checked = self.state.gates_checked_at
        if checked is None or now >= checked + GATE_RECHECK_S:
            return True
        deadline = self.gates_deadline
        return deadline is not None and checked < deadline <= now

    # ----------------------------------------------------------- shadow step --

    def _shadow_devices(self) -> tuple[str, ...]:
        wave = self.state.wave
        return tuple(d.device_id for d in self.wave_devices(wave) if d.status != "skipped")

    def _shadows(self, wave: int) -> bool:
        """Whether ``wave`` still gets a shadow step before it switches."""
        s = self.state
        if self.plan.shadow_s <= 0 or (wave > 0 and not self.plan.shadow_every_wave):
            return False
        done = (
            s.shadow_wave
            if s.shadow_wave is not None
            else (0 if s.shadow_started_at is not None else None)
        )
        return done is None or done < wave

    def _start_shadow(self, now: float, out: list[Action]) -> None:
        """The wave's devices run the new version beside the active one; nothing switches
        until the ``shadow_*`` gates pass over the plan's shadow window."""
        s = self.state
        s.phase, s.shadow_started_at, s.gates_checked_at = "shadowing", now, None
        s.shadow_wave, s.labels_arrived_at = s.wave, None
        ids = tuple(d.device_id for d in self.wave_devices(s.wave) if d.status == "queued")
        out.append(Shadow(ids))
        window = duration_text(self.plan.shadow_s)
        out.append(Note(now, "shadow_started", f"shadow run on {len(ids)} devices for {window}"))

    def _shadow_due(self, now: float, out: list[Action]) -> None:
        started = self.state.shadow_started_at or now
        if now >= started + self.plan.shadow_s and self._gates_due(now):
            out.append(EvaluateGates(self.state.wave, self._shadow_devices(), started, now))

    def _shadow_measured(
        self, values: Mapping[str, float | None], now: float, samples: Mapping[str, int] | None
    ) -> list[Action]:
        s = self.state
        out: list[Action] = []
        results = evaluate(
            [g for g in self.plan.gates if g.metric in SHADOW_METRICS],
            values,
            samples,
            min_samples=self.plan.gate_min_samples,
            allow_no_data=self.plan.gates_allow_no_data,
        )
        key = shadow_key(s.wave)
        paired = self._paired(samples or {})
        if paired is not None:
            results.append(paired)
            self._note_label_progress(key, paired, now)
        judged = self._unless_waiting(key, results, now, out)
        if judged is None:
            return out
        s.gate_results[key] = gate_dicts(judged)
        failed = [r for r in judged if not r.passed]
        if not failed or not self.plan.auto_rollback:  # (the rollback ends it otherwise)
            out.append(Shadow(self._shadow_devices(), start=False))
        if failed:
            self._halt(f"{_step(s.wave)} failed its gates: {failed_text(failed)}", now, out)
            return out
        out.append(Note(now, "gates_passed", f"{_step(s.wave)} passed its gates"))
        self._begin_wave(s.wave, now, out)
        self._advance(now, out)
        return out
