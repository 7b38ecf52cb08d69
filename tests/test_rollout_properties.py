"""Invariants of the rollout engine over generated fleets, failures and operator actions."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_server.rollouts.engine import Rollout
from fleet_server.rollouts.gates import parse_gate
from fleet_server.rollouts.model import TERMINAL, DeviceProgress, EvaluateGates, RolloutState
from fleet_server.rollouts.plan import RolloutPlan, Share
from fleet_server.rollouts.shadow import SHADOW_KEY

from .rollout_sim import Sim, make

GATES = (parse_gate("error_rate<0.05"),)
SHADOW_GATE = parse_gate("shadow_agreement>=0.9")

scenario = st.fixed_dictionaries(
    {
        "n": st.integers(0, 40),
        "canary": st.one_of(
            st.integers(0, 5).map(lambda c: Share(count=c)),
            st.floats(0.0, 0.3).map(lambda f: Share(fraction=f)),
        ),
        "waves": st.lists(st.integers(1, 99), max_size=4, unique=True).map(
            lambda xs: (*tuple(sorted(x / 100 for x in xs)), 1.0)
        ),
        "pace": st.sampled_from([6.0, 60.0, 600.0]),
        "jitter": st.sampled_from([0.0, 5.0, 30.0]),
        "fail": st.sets(st.integers(0, 39), max_size=5),
        "offline": st.sets(st.integers(0, 39), max_size=5),
        "bad_wave": st.integers(-1, 5),
        "max_failures": st.integers(0, 3),
        "auto_rollback": st.booleans(),
        "seed": st.integers(0, 2**16),
        "ops": st.lists(
            st.tuples(st.integers(1, 300), st.sampled_from(["pause", "resume", "rollback"])),
            max_size=3,
        ),
        "restart_at": st.integers(1, 400),
        # Evidence for the gates: a wave with no traffic, one with a trickle, how much
        # the plan asks for and how long it waits.
        "quiet_wave": st.integers(-1, 5),
        "slow_wave": st.integers(-1, 5),
        "min_samples": st.sampled_from([1, 20, 150]),
        "gate_timeout": st.sampled_from([0.0, 30.0, 120.0]),
        "allow_no_data": st.booleans(),
        # A shadow step before the canary, and how well the candidate agrees in it.
        "shadow": st.sampled_from([0.0, 0.0, 30.0]),
        "agreement": st.sampled_from([0.5, 0.99]),
    }
)


def build(sc: dict[str, object]) -> Sim:
    offline = frozenset(f"d{i:03d}" for i in sc["offline"])  # type: ignore[attr-defined]
    sim = make(
        sc["n"],  # type: ignore[arg-type]
        offline=offline,
        canary=sc["canary"],
        waves=sc["waves"],
        pace_per_min=sc["pace"],
        jitter_s=sc["jitter"],
        max_failures=sc["max_failures"],
        auto_rollback=sc["auto_rollback"],
        seed=sc["seed"],
        probation_s=20.0,
        offline_grace_s=100.0,
        gate_min_samples=sc["min_samples"],
        gate_timeout_s=sc["gate_timeout"],
        gates_allow_no_data=sc["allow_no_data"],
        shadow_s=sc["shadow"],
        gates=(*GATES, SHADOW_GATE) if sc["shadow"] else GATES,
    )
    sim.fail = {f"d{i:03d}" for i in sc["fail"]}  # type: ignore[attr-defined]
    bad = sc["bad_wave"]
    sim.error_rate = lambda wave: 0.5 if wave == bad else 0.0
    quiet, slow = sc["quiet_wave"], sc["slow_wave"]
    sim.traffic = lambda wave: 0.0 if wave == quiet else 2.0 if wave == slow else 10.0
    agreement = float(sc["agreement"])  # type: ignore[arg-type]

    def shadow(a: EvaluateGates) -> tuple[dict[str, float | None], dict[str, int]]:
        n = int(sim.traffic(0) * max(0.0, a.until - a.since))
        return {"shadow_agreement": agreement if n else None}, {"shadow_agreement": n}

    sim.figures = shadow
    return sim


def play(sim: Sim, sc: dict[str, object], *, restart: bool) -> None:
    ops = dict(sc["ops"])  # type: ignore[call-overload]
    for second in range(1, 1200):
        if restart and second == sc["restart_at"]:
            # Everything the engine knows goes through JSON and back, like a server restart.
            r = sim.rollout
            sim.rollout = Rollout(
                RolloutPlan.from_json(r.plan.to_json()),
                RolloutState.from_json(r.state.to_json()),
                [DeviceProgress.from_json(d.to_json()) for d in r.devices.values()],
            )
        op = ops.get(second)
        if op is not None:
            try:
                sim.apply(getattr(sim.rollout, op)(sim.now))
            except Exception as exc:  # only state errors are acceptable
                assert type(exc).__name__ == "RolloutError", exc
        sim.now += 1
        sim.apply(sim.rollout.tick(sim.now))
        sim.devices_answer()
        if sim.rollout.status in TERMINAL:
            break


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario)
def test_invariants(sc: dict[str, object]) -> None:
    sim = build(sc)
    play(sim, sc, restart=False)
    r = sim.rollout

    # never beyond the current wave's cumulative share
    assert all(done <= end for done, end in sim.max_dispatched_share)
    # nobody is sent twice unless they were offline in between
    sent_ids = [d for _, d in sim.sent]
    assert len(sent_ids) == len(set(sent_ids))
    # a device of wave w > 0 is only sent after wave w-1 passed its gates
    for _, device_id in sim.sent:
        w = r.devices[device_id].wave
        if w > 0:
            assert all(g["passed"] for g in r.state.gate_results[str(w - 1)])
    # with a shadow step, nothing is sent before its gates passed, and nothing after they failed
    if sc["shadow"]:
        shadow_results = r.state.gate_results.get(SHADOW_KEY)
        if sim.sent:
            assert shadow_results and all(g["passed"] for g in shadow_results)
            ended = [t for t, _, start in sim.shadows if not start]
            assert ended and min(t for t, _ in sim.sent) >= ended[0]
        started = [t for t, _, start in sim.shadows if start]
        # every shadow run that started was ended once the rollout is over
        if r.status in TERMINAL and started:
            assert sim.shadows[-1][2] is False
    else:
        assert sim.shadows == [] and SHADOW_KEY not in r.state.gate_results
    # never proceed past a failed gate
    for wave, results in r.state.gate_results.items():
        if wave == SHADOW_KEY:
            continue
        if not all(g["passed"] for g in results):
            assert r.state.wave == int(wave)
            assert all(d.wave <= int(wave) for d in r.devices.values() if d.sent_at is not None)
    # a traffic gate passes only on enough evidence, unless the plan allows no data
    for results in r.state.gate_results.values():
        for g in results:
            if g["passed"] and g["unit"] and not sc["allow_no_data"]:
                assert g["samples"] >= sc["min_samples"], g
            if g.get("waiting"):
                assert not g["passed"]
    # a gate short of data fails only once the wait ran out, and never with the opt-out
    if "data:" in r.state.reason:
        assert not sc["allow_no_data"]
        halted = [n for n in sim.notes if n.kind == "halted"][-1]
        deadline = (r.state.settled_at or 0) + 20.0 + sc["gate_timeout"]  # type: ignore[operator]
        assert halted.ts >= deadline
    # a rollback reverts exactly the devices that were sent the update
    if r.status in ("rolling_back", "rolled_back"):
        assert sorted(sim.reverted) == sorted(set(sent_ids))
    else:
        assert sim.reverted == []
    # a completed rollout left nobody behind
    if r.status == "completed":
        assert all(d.status in ("succeeded", "failed", "skipped") for d in r.devices.values())
        assert r.failures <= sc["max_failures"] or r.state.failure_base  # type: ignore[operator]


@settings(max_examples=60, deadline=None)
@given(scenario)
def test_a_restart_changes_nothing(sc: dict[str, object]) -> None:
    a, b = build(sc), build(sc)
    play(a, sc, restart=False)
    play(b, sc, restart=True)
    assert a.sent == b.sent
    assert a.reverted == b.reverted
    assert a.rollout.state.to_json() == b.rollout.state.to_json()
    assert {k: d.to_json() for k, d in a.rollout.devices.items()} == {
        k: d.to_json() for k, d in b.rollout.devices.items()
    }
