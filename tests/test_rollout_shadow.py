"""The shadow step: the canary runs the new version beside the active one before any switch."""

from __future__ import annotations

import pytest

from edgefleet_contract.errors import PlanError
from edgefleet_contract.messages import Telemetry
from fleet_server.rollouts.champion import Arm
from fleet_server.rollouts.engine import Rollout
from fleet_server.rollouts.gates import parse_gate
from fleet_server.rollouts.metrics import shadow_figures
from fleet_server.rollouts.model import Action, EvaluateGates, Note
from fleet_server.rollouts.plan import RolloutPlan
from fleet_server.rollouts.shadow import SHADOW_KEY

from .rollout_sim import ARTIFACT, make, plan

GATES = (parse_gate("error_rate<0.05"), parse_gate("shadow_agreement>=0.9"))


def _shadow(agreement: float, per_s: float = 10.0):  # type: ignore[no-untyped-def]
    def figures(a: EvaluateGates) -> tuple[dict[str, float | None], dict[str, int]]:
        n = int(per_s * (a.until - a.since))
        return {"shadow_agreement": agreement if n else None}, {"shadow_agreement": n}

    return figures


def test_nothing_switches_until_the_shadow_gates_pass() -> None:
    sim = make(8, shadow_s=600.0, gates=GATES, canary=plan().canary)
    sim.figures = _shadow(0.97)
    sim.run(300)
    assert sim.sent == []  # shadowing: no device was sent the artifact
    assert sim.rollout.state.phase == "shadowing"
    assert [(ids, start) for _, ids, start in sim.shadows] == [(sim.shadows[0][1], True)]
    canary = {d.device_id for d in sim.rollout.wave_devices(0)}
    assert set(sim.shadows[0][1]) == canary
    sim.run(3000)
    ended = [t for t, _, start in sim.shadows if not start]
    assert len(ended) == 1
    assert sim.sent and min(t for t, _ in sim.sent) >= ended[0] >= 1000.0 + 600.0
    results = sim.rollout.state.gate_results[SHADOW_KEY]
    assert [r["metric"] for r in results] == ["shadow_agreement"]
    assert results[0]["passed"] and results[0]["value"] == pytest.approx(0.97)
    # The waves are judged on their own gates only: no wave waits for shadow figures.
    assert all(r["metric"] != "shadow_agreement" for r in sim.rollout.state.gate_results["0"])
    assert sim.rollout.status == "completed"


def test_low_agreement_halts_before_any_device_switches() -> None:
    sim = make(8, shadow_s=600.0, gates=GATES)
    sim.figures = _shadow(0.6)
    sim.run(2000)
    assert sim.sent == []
    assert sim.rollout.status == "rolled_back"
    assert "shadow step failed" in sim.rollout.state.reason
    assert [start for _, _, start in sim.shadows] == [True, False]


def test_a_shadow_step_without_data_waits_then_fails() -> None:
    sim = make(4, shadow_s=60.0, gates=GATES, gate_timeout_s=300.0)
    sim.figures = _shadow(0.99, per_s=0.0)
    sim.run(120)
    waiting = sim.rollout.state.gate_results[SHADOW_KEY]
    assert waiting[0]["waiting"]
    assert any(n.kind == "gates_waiting" and "shadow step" in n.message for n in sim.notes)
    sim.run(400)
    assert sim.sent == [] and sim.rollout.status == "rolled_back"


def test_shadow_plan_options_round_trip_and_are_checked() -> None:
    p = plan(shadow_s=1800.0, gates=GATES)
    assert RolloutPlan.from_json(p.to_json()).shadow_s == 1800.0
    old = plan().to_json()
    del old["shadow_s"]
    assert RolloutPlan.from_json(old).shadow_s == 0.0  # stored before the shadow step existed
    with pytest.raises(PlanError, match="--shadow"):
        plan(gates=GATES)
    with pytest.raises(PlanError, match="--shadow"):
        plan(shadow_s=-1.0)
    every = plan(shadow_s=600.0, gates=GATES, shadow_every_wave=True)
    assert RolloutPlan.from_json(every.to_json()).shadow_every_wave
    del old["shadow_every_wave"]
    assert not RolloutPlan.from_json(old).shadow_every_wave
    from fleet_server.api.routes_rollouts import RolloutCreate, build_plan

    body = {"artifact": ARTIFACT.label, "target": "all", "shadow": "30m", "shadow_waves": "all"}
    assert build_plan(RolloutCreate.model_validate(body), ARTIFACT, 0).shadow_every_wave
    assert not build_plan(
        RolloutCreate.model_validate({**body, "shadow_waves": "canary"}), ARTIFACT, 0
    ).shadow_every_wave


def _batch(seq: int, **shadow: object) -> Telemetry:
    return Telemetry.model_validate(
        {
            "device_id": "d1",
            "batch_id": f"b-{seq}",
            "seq": seq,
            "ts": 1000.0 + seq,
            "window_s": 10.0,
            "shadow": {"model": ARTIFACT.name, "version": ARTIFACT.version, **shadow},
        }
    )


def test_shadow_figures_sum_the_devices_windows() -> None:
    batches = {
        "d1": [
            _batch(
                1,
                samples=100,
                agreed=90,
                labelled=10,
                active_correct=9,
                candidate_correct=8,
                dropped=3,
            )
        ],
        "d2": [
            _batch(2, samples=50, agreed=50, labelled=10, active_correct=10, candidate_correct=10)
        ],
        "d3": [_batch(3, samples=1000, agreed=0).model_copy(update={"shadow": None})],
    }
    values, counts = shadow_figures(batches, ARTIFACT)
    assert values["shadow_agreement"] == pytest.approx(140 / 150)
    assert values["shadow_accuracy_delta"] == pytest.approx(-1 / 20)
    assert values["shadow_p95_latency_ms"] is None
    assert counts["shadow_agreement"] == 150 and counts["shadow_accuracy_delta"] == 20
    assert counts["shadow_dropped"] == 3
    other = {
        "d1": [
            _batch(1, samples=5, agreed=5).model_copy(
                update={"shadow": _batch(1).shadow.model_copy(update={"version": "9.9.9"})}  # type: ignore[union-attr]
            )
        ]
    }
    assert shadow_figures(other, ARTIFACT)[0]["shadow_agreement"] is None


def _pairs(new: float, parent: float, discordant: float, per_s: float = 1.0):  # type: ignore[no-untyped-def]
    """Shadow figures with paired labels: per labelled input, each model right with its
    accuracy, exactly one of them right on ``discordant`` of them."""

    def figures(a: EvaluateGates) -> tuple[dict[str, float | None], dict[str, int]]:
        n = int(per_s * (a.until - a.since))
        gain = round((new - parent) * n)
        disc = max(abs(gain), round(discordant * n))
        disc += (disc - gain) % 2  # b - c = gain and b + c = disc need the same parity
        counts = {
            "shadow_agreement": 10 * n,
            "shadow_pairs": n,
            "shadow_pairs_new_correct": round(parent * n) + gain,
            "shadow_pairs_parent_correct": round(parent * n),
            "shadow_pairs_discordant": disc,
        }
        return {"shadow_agreement": 0.97 if n else None}, counts

    return figures


def test_the_parent_gate_is_judged_on_the_shadow_runs_paired_labels() -> None:
    """Two models that disagree on 2% of inputs: about 90 paired labels settle "no worse
    by 5 points", where two independent samples would need about 400 each.  The canary
    is not asked again after its switch (its unpaired labels trickle in far slower)."""
    sim = make(8, shadow_s=600.0, gates=GATES, running="digits@1.2.0")
    sim.figures = _pairs(0.95, 0.95, 0.02)
    sim.labels = _slow_labels()
    sim.run(4000)
    shadow = {r["metric"]: r for r in sim.rollout.state.gate_results[SHADOW_KEY]}
    paired = shadow["accuracy_vs_parent"]
    assert paired["passed"] and "paired" in paired["gate"], paired
    assert paired["needed"] < 150 and paired["samples"] >= min(paired["needed"], 1)
    assert all(r["metric"] != "accuracy_vs_parent" for r in sim.rollout.state.gate_results["0"])
    # The canary went on on its paired evidence; later waves (no shadow run of their own)
    # wait for their unpaired labels as before.
    assert sim.rollout.state.wave >= 1 and sim.rollout.status == "wave", sim.rollout.state.reason


def test_a_worse_model_is_stopped_by_paired_labels_before_any_switch() -> None:
    sim = make(8, shadow_s=600.0, gates=GATES, running="digits@1.2.0")
    sim.figures = _pairs(0.85, 0.95, 0.12)
    sim.run(3000)
    assert sim.sent == []
    assert sim.rollout.status == "rolled_back"
    assert "accuracy vs digits@1.2.0" in sim.rollout.state.reason


def _slow_labels():  # type: ignore[no-untyped-def]
    from fleet_server.rollouts.champion import Arm

    def labels(a: EvaluateGates) -> tuple[Arm, Arm]:
        n = max(0, int(0.01 * (a.until - a.since)))
        return Arm(round(0.95 * n), n), Arm(4750, 5000)

    return labels


def test_every_wave_can_get_its_own_shadow_step() -> None:
    sim = make(8, shadow_s=300.0, gates=GATES, shadow_every_wave=True)
    sim.figures = _shadow(0.97)
    sim.run(8000)
    r = sim.rollout
    assert r.status == "completed", r.state.reason
    started = [(t, set(ids)) for t, ids, start in sim.shadows if start]
    assert len(started) == len(r.state.ends)  # the canary and each wave after it
    for wave, (when, ids) in enumerate(started):
        devices = {d.device_id for d in r.wave_devices(wave) if d.status != "skipped"}
        assert ids <= devices
        # nobody of the wave was sent the artifact before its shadow step began
        assert all(t >= when for t, d in sim.sent if d in devices)
    assert {f"{SHADOW_KEY}-{w}" for w in range(1, len(r.state.ends))} <= set(r.state.gate_results)
    with pytest.raises(PlanError, match="shadow-waves all needs a shadow step"):
        plan(shadow_every_wave=True)


def test_resuming_a_halted_shadow_step_runs_it_again_before_any_switch() -> None:
    sim = make(8, shadow_s=600.0, gates=GATES, auto_rollback=False)
    sim.figures = _shadow(0.6)
    sim.run(2000)
    assert sim.rollout.status == "halted" and sim.sent == []
    sim.apply(sim.rollout.resume(sim.now))
    assert sim.rollout.state.phase == "shadowing"  # a fresh shadow window, not a switch
    sim.run(300)
    assert sim.sent == []
    assert [start for _, _, start in sim.shadows] == [True, False, True]


def test_the_event_log_of_a_shadow_step_that_passes() -> None:
    sim = make(8, shadow_s=600.0, gates=GATES, canary=plan().canary)
    sim.figures = _shadow(0.97)
    sim.run(3000)
    assert [(n.ts, n.kind, n.message) for n in sim.notes[:4]] == [
        (1001.0, "started", "rolling out digits@1.3.0"),
        (1001.0, "shadow_started", "shadow run on 1 devices for 10m"),
        (1601.0, "gates_passed", "the shadow step passed its gates"),
        (1601.0, "wave_started", "canary: 1 devices"),
    ]


def test_the_event_log_of_a_shadow_step_that_gets_no_data() -> None:
    sim = make(4, shadow_s=60.0, gates=GATES, gate_timeout_s=300.0)
    sim.figures = _shadow(0.99, per_s=0.0)
    sim.run(520)
    failed = (
        "the shadow step failed its gates: shadow_agreement>=0.9 "
        "(no data: 0 of 20 shadow answers from the wave within 5m)"
    )
    assert [(n.ts, n.kind, n.message) for n in sim.notes[1:4]] == [
        (1001.0, "shadow_started", "shadow run on 1 devices for 1m"),
        (
            1061.0,
            "gates_waiting",
            "the shadow step is waiting for data: shadow_agreement>=0.9 0/20 shadow answers "
            "(gates still short of it 5m after the shadow run fail)",
        ),
        (1361.0, "halted", failed),
    ]
    assert sim.rollout.state.reason == f"automatic rollback: {failed}"


def test_a_wave_without_data_waits_after_probation_with_the_same_rule() -> None:
    """The wait for data (shared with the shadow step) names the wave and its probation."""
    sim = make(4, gates=(parse_gate("error_rate<0.05"),), gate_timeout_s=300.0)
    sim.figures = lambda a: ({"error_rate": None}, {"error_rate": 0})
    sim.run(1000)
    assert [(n.ts, n.kind, n.message) for n in sim.notes[2:4]] == [
        (
            1061.0,
            "gates_waiting",
            "wave 0 is waiting for data: error_rate<0.05 0/20 inferences "
            "(gates still short of it 5m after probation fail)",
        ),
        (
            1361.0,
            "halted",
            "wave 0 failed its gates: error_rate<0.05 "
            "(no data: 0 of 20 inferences from the wave within 5m)",
        ),
    ]


def _paired_shadow(**kw: object) -> tuple[Rollout, list[Action]]:
    """A canary's shadow run (parent digits@1.2.0) whose window is over: the tick asks for its
    figures, which the tests then give by hand."""
    sim = make(4, shadow_s=60.0, gates=GATES, running="digits@1.2.0", gate_timeout_s=300.0, **kw)
    r = sim.rollout
    r.tick(1001.0)
    return r, r.tick(1061.0)


def _measure(r: Rollout, now: float, pairs: int, answers: int = 1000) -> list[Action]:
    samples = {
        "shadow_agreement": answers,
        "shadow_pairs": pairs,
        "shadow_pairs_new_correct": pairs,
        "shadow_pairs_parent_correct": pairs,
        "shadow_pairs_discordant": 0,
    }
    return r.gates_measured(0, {"shadow_agreement": 0.97 if answers else None}, now, samples)


def test_the_paired_gate_waits_as_long_as_its_labels_keep_arriving() -> None:
    r, asked = _paired_shadow()
    assert asked == [EvaluateGates(0, (r.wave_devices(0)[0].device_id,), 1001.0, 1061.0)]
    out = _measure(r, 1061.0, pairs=1)
    assert len(out) == 1 and isinstance(out[0], Note) and out[0].kind == "gates_waiting"
    assert out[0].message.endswith(
        "(gates still short of it 5m after the shadow run fail; the parent gate keeps "
        "waiting as long as its labels keep arriving)"
    )
    assert r.state.labels_arrived_at == 1061.0
    assert _measure(r, 1066.0, pairs=1) == []
    assert r.state.labels_arrived_at == 1061.0  # no new label: the wait does not grow
    assert r.gates_deadline == 1061.0 + 300.0
    _measure(r, 1071.0, pairs=2)
    assert r.state.labels_arrived_at == 1071.0
    assert r.gates_deadline == 1071.0 + 300.0
    _measure(r, 1076.0, pairs=500, answers=0)  # the parent gate passes, another waits
    assert r.state.labels_arrived_at is None
    assert r.gates_deadline == 1001.0 + 60.0 + 300.0


def test_paired_counts_missing_from_the_figures_count_as_none() -> None:
    results = []
    for counts in ({}, dict.fromkeys(("new_correct", "parent_correct", "discordant"), 0)):
        r, _ = _paired_shadow()
        samples = {"shadow_agreement": 1000, "shadow_pairs": 50}
        samples |= {f"shadow_pairs_{k}": v for k, v in counts.items()}
        r.gates_measured(0, {"shadow_agreement": 0.97}, 1061.0, samples)
        results.append(r.state.gate_results[SHADOW_KEY])
    assert results[0] == results[1]
    assert results[0][-1]["metric"] == "accuracy_vs_parent"


@pytest.mark.parametrize("kw", [{"vs_parent": False}, {"running": None}])
def test_no_paired_gate_without_a_parent_to_compare_with(kw: dict[str, object]) -> None:
    sim = make(4, **{"shadow_s": 60.0, "gates": GATES, "running": "digits@1.2.0", **kw})
    r = sim.rollout
    r.tick(1001.0)
    r.tick(1061.0)
    samples = {"shadow_agreement": 1000, "shadow_pairs": 50, "shadow_pairs_new_correct": 50}
    r.gates_measured(0, {"shadow_agreement": 0.97}, 1061.0, samples)
    assert [g["metric"] for g in r.state.gate_results[SHADOW_KEY]] == ["shadow_agreement"]


def test_a_shadow_step_without_paired_labels_leaves_the_parent_gate_to_the_wave() -> None:
    sim = make(8, shadow_s=60.0, gates=GATES, running="digits@1.2.0")
    sim.figures = _shadow(0.97)
    sim.labels = lambda a: (Arm(950, 1000), Arm(950, 1000))
    sim.run(400)
    metrics = [g["metric"] for g in sim.rollout.state.gate_results["0"]]
    assert metrics == ["error_rate", "accuracy_vs_parent"]


def test_each_waves_shadow_step_runs_on_its_devices_not_skipped() -> None:
    sim = make(8, shadow_s=300.0, gates=GATES, shadow_every_wave=True)
    r = sim.rollout
    wave2 = r.wave_devices(2)
    wave2[0].status = "skipped"
    rest = (wave2[1].device_id,)
    sim.figures = _shadow(0.97)
    sim.run(4000)
    assert r.status == "completed"
    assert [(ids, start) for _, ids, start in sim.shadows][4:6] == [(rest, True), (rest, False)]
    assert next(g.device_ids for g in sim.gate_calls if g.wave == 2) == rest
    passed = [n.message for n in sim.notes if n.kind == "gates_passed"]
    assert passed[2:4] == ["the shadow step of wave 1 passed its gates", "wave 1 passed its gates"]


def test_a_one_second_shadow_window_is_still_a_shadow_step() -> None:
    sim = make(4, shadow_s=1.0, gates=GATES)
    sim.figures = _shadow(0.97)
    sim.run(5)
    assert sim.notes[1].message == "shadow run on 1 devices for 1s"


def test_a_state_from_before_per_wave_shadow_steps_had_its_canary_shadowed() -> None:
    r = make(8, shadow_s=300.0, gates=GATES, shadow_every_wave=True).rollout
    r.state.shadow_started_at, r.state.shadow_wave = 1000.0, None
    assert (r._shadows(0), r._shadows(1)) == (False, True)


def test_gates_short_of_data_are_measured_every_few_seconds_and_at_the_deadline() -> None:
    sim = make(4, gates=(parse_gate("error_rate<0.05"),), gate_timeout_s=298.0)
    sim.figures = lambda a: ({"error_rate": None}, {"error_rate": 0})
    sim.run(1000)
    asked = [g.until for g in sim.gate_calls]
    assert asked == [1061.0 + 5 * i for i in range(60)] + [1061.0 + 298.0]
    assert sim.rollout.status == "rolled_back"


def test_a_shadow_step_without_data_passes_where_no_data_is_allowed() -> None:
    sim = make(4, shadow_s=60.0, gates=GATES, gates_allow_no_data=True)
    sim.figures = _shadow(0.99, per_s=0.0)
    sim.run(62)
    assert [n.message for n in sim.notes if n.kind == "gates_passed"][:1] == [
        "the shadow step passed its gates"
    ]
