"""What an operator sees of a rollout: per-wave progress, gate figures, device outcomes."""

from __future__ import annotations

from typing import Any

from ..store.base import RolloutEvent
from .engine import Rollout
from .gates import shortfall
from .shadow import shadow_key


def waiting_text(rollout: Rollout) -> str:
    """``waiting for data: error_rate<0.01 3/20 inferences`` while the current wave's gates
    lack evidence; empty otherwise (also for results stored before gates could wait)."""
    s = rollout.state
    if rollout.gates_deadline is None:
        return ""
    key = shadow_key(s.wave) if s.phase == "shadowing" else str(s.wave)
    short = shortfall(s.gate_results.get(key) or [])
    return f"waiting for data: {short}" if short else ""


def summary(rollout: Rollout) -> dict[str, Any]:
    s, plan = rollout.state, rollout.plan
    done = sum(1 for d in rollout.devices.values() if d.status == "succeeded")
    waiting = waiting_text(rollout)
    return {
        "id": s.id,
        "status": s.status,
        "artifact": plan.artifact.label,
        "kind": plan.artifact.kind,
        "target": plan.selector,
        "wave": s.wave,
        "phase": s.phase,
        "devices": len(rollout.devices),
        "succeeded": done,
        "failed": rollout.failures,
        "reason": s.reason,
        "waiting": waiting,
        # The current wave's gates lack data; without it they fail at gates_deadline.
        "gates_deadline": rollout.gates_deadline if waiting else None,
        "created_at": s.created_at,
        "created_by": s.created_by,
        "updated_at": s.updated_at,
        "finished_at": s.finished_at,
    }


def detail(rollout: Rollout, events: list[RolloutEvent]) -> dict[str, Any]:
    s, plan = rollout.state, rollout.plan
    counts = rollout.counts()
    summary_waiting = waiting_text(rollout)
    waves = []
    previous_end = 0
    for i, end in enumerate(s.ends):
        waves.append(
            {
                "index": i,
                "name": "canary" if i == 0 else f"wave {i}",
                "cumulative": end,
                "size": end - previous_end,
                "counts": counts[i],
                "state": _wave_state(rollout, i),
                "gates": s.gate_results.get(str(i)),
                "waiting": summary_waiting if i == s.wave and s.phase != "shadowing" else "",
            }
        )
        previous_end = end
    devices = [
        {
            "device_id": d.device_id,
            "wave": d.wave,
            "status": d.status,
            "phase": d.phase,
            "detail": d.detail,
            "attempts": d.attempts,
            "health": d.health,
            "sent_at": d.sent_at,
            "finished_at": d.finished_at,
        }
        for d in sorted(rollout.devices.values(), key=lambda d: d.order)
    ]
    return {
        **summary(rollout),
        "plan": plan.to_json(),
        "shadow": _shadow(rollout),
        "waves": waves,
        "devices_detail": devices,
        "events": [
            {"ts": e.ts, "kind": e.kind, "message": e.message, "device_id": e.device_id}
            for e in events
        ],
    }


def _shadow(rollout: Rollout) -> dict[str, Any] | None:
    """The shadow step (None: the plan has none): its window, state and gate figures
    (agreement, accuracy of both models on labels, latency, with the evidence behind them)."""
    s, plan = rollout.state, rollout.plan
    if plan.shadow_s <= 0:
        return None
    wave = s.shadow_wave if s.shadow_wave is not None else 0
    results = s.gate_results.get(shadow_key(wave))
    state: str
    judged_bad = any(not r["passed"] and not r.get("waiting") for r in results or [])
    if s.shadow_started_at is None:
        state = "waiting"
    elif s.phase == "shadowing" and s.status in ("canary", "wave", "paused"):
        state = "shadowing"
    elif judged_bad:
        state = "failed"
    elif s.phase == "shadowing":  # ended without a verdict (aborted, rolled back by hand)
        state = s.status
    else:
        state = "passed"
    return {
        "duration_s": plan.shadow_s,
        "wave": wave,
        "every_wave": plan.shadow_every_wave,
        "started_at": s.shadow_started_at,
        "state": state,
        "gates": results,
    }


def _wave_state(rollout: Rollout, wave: int) -> str:
    s = rollout.state
    if wave < s.wave or (wave == s.wave and s.phase == "finishing"):
        return "passed"
    if wave > s.wave:
        return "waiting"
    if s.status in ("canary", "wave"):
        return s.phase
    return s.status
