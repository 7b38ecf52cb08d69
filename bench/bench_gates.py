"""Champion/challenger gate: does the default plan stop a regression and let an equal model by?

Each trial is one real rollout engine (:class:`~fleet_server.rollouts.engine.Rollout`)
built from the plan the REST API, ``fleetctl rollout create`` and a training
run's ``--rollout`` give when nothing is set (``build_plan`` of an empty
``PlanSpec``: canary 1 device, probation 10m, gate timeout 30m, the
champion/challenger gate at 5 points and 95%), over 20 devices that run the
parent.  The engine's ``EvaluateGates`` is answered with telemetry batches fed
through the gate figures of :mod:`fleet_server.rollouts.metrics` (the per-version
filter and the parent's labels), and the engine decides: pass and go on, wait
for more labels, or halt.  Labels arrive at 0.3 per second from the canary
(so the gate usually has to wait for more after probation) and from every
device still on the parent; each label is right with the version's true
accuracy, drawn once per trial so the gate sees one growing sample, as it would.

The parent is right 95.8% of the time; the "10-point regression" is right 85.8%
(the issue's case), the "equal model" 95.8%.  Rates are over all trials of all
seeds (worst seed beside them); "labels asked" is what the gate asked the
canary for when it decided (mean and largest).  Baseline in the same run, same
engine: the accuracy gate of before, ``accuracy>=0.9`` with at least 20 labels,
on the same label stream (it sees the ~180 labels of probation) and at a rate
where probation brings it exactly its 20 (the issue's case).  The last two rows are the
quiet canary (0.1 labels/s): fewer labels within probation plus the gate timeout than the
gate asks for, so it waits past the timeout while they keep arriving.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from edgefleet_contract.messages import InferenceStats, Telemetry
from fleet_server.rollouts.artifacts import ResolvedArtifact
from fleet_server.rollouts.engine import Candidate, Rollout
from fleet_server.rollouts.gates import parse_gate
from fleet_server.rollouts.metrics import figures, parent_labels, samples
from fleet_server.rollouts.model import Action, Dispatch, EvaluateGates, Revert
from fleet_server.rollouts.plan import PlanSpec, RolloutPlan, build_plan

SEEDS = (1, 2, 3, 4, 5)
TRIALS = 200
"""Per seed and scenario."""
DEVICES = 20
PARENT, PARENT_ACC = "digits@1.0.0", 0.958
RATE = 0.3
"""Labels per second per device."""
FEW = 20 / 600
"""The baseline's label rate when probation (10m) brings it exactly its 20 labels."""
SLOW = 0.1
"""A quiet canary: 240 labels in probation plus the gate timeout, fewer than the gate asks
for, so it has to wait past the timeout (it does, while labels keep arriving)."""
SLOW_TRIALS = 100
"""Per seed and scenario at the slow rate (each trial runs about an hour of rollout)."""
STEP = 5.0
ARTIFACT = ResolvedArtifact(
    "model", "digits", "2.0.0", "models/digits/2.0.0/digits-2.0.0.efpkg", "ab" * 32, 1000
)


@dataclass
class Outcome:
    passed: bool
    labels: int
    needed: int


def _batch(device: str, version: str, n: int, k: int) -> Telemetry:
    stats = InferenceStats(
        model="digits",
        version=version,
        count=n,
        errors=0,
        throughput_per_s=1.0,
        feedback_count=n,
        feedback_correct=k,
    )
    return Telemetry(
        device_id=device, batch_id=f"b-{n}", seq=1, ts=0.0, window_s=1, inference=stats
    )


class Trial:
    """One rollout, its devices answering at once and their labels arriving over time."""

    def __init__(
        self, plan: RolloutPlan, accuracy: float, rng: np.random.Generator, rate: float = RATE
    ) -> None:
        self.rate = rate
        cands = [Candidate(f"d{i:02d}", True, PARENT) for i in range(DEVICES)]
        self.rollout = Rollout.create("r-bench", plan, cands, now=0.0, actor="bench")
        self.start = 0.0
        horizon = int(RATE * 4 * 3600) + 1  # more labels than any trial can see
        self.new = np.cumsum(rng.random(horizon) < accuracy)
        self.parent = np.cumsum(rng.random(horizon * DEVICES) < PARENT_ACC)
        self.asked = 0

    def _measure(self, a: EvaluateGates, now: float) -> list[Action]:
        n = int(self.rate * (a.until - a.since)) * len(a.device_ids)
        after = {
            d: [_batch(d, ARTIFACT.version, n, int(self.new[n - 1]) if n else 0)]
            for d in a.device_ids
        }
        values, counts = figures(after, {}, {}, ARTIFACT), samples(after, {}, ARTIFACT)
        on_parent = [d for d in self.rollout.devices if d not in a.device_ids]
        m = int(self.rate * (a.until + 3600.0)) * len(on_parent)  # since an hour before the start
        rows = {"cohort": [_batch("cohort", "1.0.0", m, int(self.parent[m - 1]) if m else 0)]}
        values["parent_accuracy"], counts["parent_accuracy"] = parent_labels(rows, PARENT)
        return self.rollout.gates_measured(a.wave, values, now, counts)

    def _apply(self, actions: list[Action], now: float) -> None:
        pending = list(actions)
        while pending:
            a = pending.pop(0)
            if isinstance(a, Dispatch | Revert):
                self.rollout.delivered(a.device_id, 1, now, {"kind": "model"})
                if isinstance(a, Dispatch):
                    pending += self.rollout.device_report(
                        a.device_id, now=now, phase="committed", update_version=1
                    )
            elif isinstance(a, EvaluateGates):
                pending += self._measure(a, now)

    def run(self) -> Outcome:
        now = 0.0
        while self.rollout.state.wave == 0 and self.rollout.status in ("pending", "canary"):
            now += STEP
            self._apply(self.rollout.tick(now), now)
        results = self.rollout.state.gate_results.get("0") or []
        gate = results[-1] if results else {"samples": 0, "needed": 0}
        passed = self.rollout.status not in ("halted", "rolling_back", "rolled_back")
        return Outcome(passed, int(gate.get("samples") or 0), int(gate.get("needed") or 0))


def _plans() -> dict[str, RolloutPlan]:
    default = build_plan(PlanSpec(target="all"), ARTIFACT, 0)
    before = build_plan(
        PlanSpec(target="all", gates=["accuracy>=0.9"], vs_parent=False), ARTIFACT, 0
    )
    assert before.gates == (parse_gate("accuracy>=0.9"),) and before.gate_min_samples == 20
    return {"default": default, "before": before}


def _rates(
    plan: RolloutPlan, accuracy: float, rate: float = RATE, trials: int = TRIALS
) -> tuple[list[float], list[Outcome]]:
    per_seed, outcomes = [], []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        got = [Trial(plan, accuracy, rng, rate).run() for _ in range(trials)]
        per_seed.append(sum(o.passed for o in got) / trials)
        outcomes += got
    return per_seed, outcomes


def run() -> list[dict[str, object]]:
    plans = _plans()
    rows: list[dict[str, object]] = []
    cases = (
        ("gate pass rate, 10-point regression", PARENT_ACC - 0.10, True, "<= 0.05"),
        ("gate false-fail rate, equal model", PARENT_ACC, False, "<= 0.05"),
        ("gate pass rate, 5-point regression (at the margin)", PARENT_ACC - 0.05, True, "~0.05"),
    )
    for label, accuracy, count_passes, goal in cases:
        per_seed, outcomes = _rates(plans["default"], accuracy)
        base_seed, _ = _rates(plans["before"], accuracy)
        few_seed, _ = _rates(plans["before"], accuracy, FEW)
        rate = [p if count_passes else 1 - p for p in per_seed]
        base = [p if count_passes else 1 - p for p in base_seed]
        few = [p if count_passes else 1 - p for p in few_seed]
        asked = [o.labels for o in outcomes]
        rows.append(
            {
                "measure": label,
                "value": f"{statistics.fmean(rate):.3f}",
                "worst seed": f"{max(rate):.3f}",
                "goal": goal,
                "labels asked (mean / max)": f"{statistics.fmean(asked):.0f} / {max(asked)}",
                "before, same labels": f"{statistics.fmean(base):.3f}",
                "before, on 20 labels": f"{statistics.fmean(few):.3f}",
                "trials": f"{len(SEEDS)} seeds x {TRIALS}",
            }
        )
    # A canary that sees fewer labels within probation plus the gate timeout (10m + 30m)
    # than the gate asks for: it waits for them while they keep arriving.
    slow = (
        ("gate false-fail rate, equal model", PARENT_ACC, False),
        ("gate pass rate, 10-point regression", PARENT_ACC - 0.10, True),
    )
    for label, accuracy, count_passes in slow:
        per_seed, outcomes = _rates(plans["default"], accuracy, SLOW, SLOW_TRIALS)
        rate = [p if count_passes else 1 - p for p in per_seed]
        asked = [o.labels for o in outcomes]
        rows.append(
            {
                "measure": f"{label}, {SLOW:g} labels/s",
                "value": f"{statistics.fmean(rate):.3f}",
                "worst seed": f"{max(rate):.3f}",
                "goal": "<= 0.05",
                "labels asked (mean / max)": f"{statistics.fmean(asked):.0f} / {max(asked)}",
                "before, same labels": "",
                "before, on 20 labels": "",
                "trials": f"{len(SEEDS)} seeds x {SLOW_TRIALS}",
            }
        )
    return rows
