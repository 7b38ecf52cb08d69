"""Gates judged only on enough evidence: a wave short of data waits, then fails at the timeout.

Driven by the simulated edge of :mod:`tests.rollout_sim` (no I/O): ``traffic``
is how many observations per second reach the server from a wave's devices.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from fleet_server.fleetctl.cmd_rollouts import render
from fleet_server.rollouts.gates import parse_gate
from fleet_server.rollouts.model import Note, RolloutState
from fleet_server.rollouts.plan import RolloutPlan
from fleet_server.rollouts.shadow import GATE_RECHECK_S
from fleet_server.rollouts.view import detail

from .rollout_sim import make, plan


def rendered(view: dict[str, Any]) -> str:
    console = Console(record=True, width=200)
    console.print(render(view))
    return console.export_text()


def halted_at(sim_notes: list[Note], kind: str = "halted") -> float:
    return float(next(n.ts for n in sim_notes if n.kind == kind))


def test_a_quiet_canary_waits_then_passes_once_data_arrives() -> None:
    sim = make(20, probation_s=60.0)
    sim.traffic = lambda wave: 0.0
    sim.run(120)
    r = sim.rollout
    assert (r.status, r.state.wave, r.state.phase) == ("canary", 0, "gating")
    assert len(sim.sent) == 1  # nothing beyond the canary while it waits
    [gate] = r.state.gate_results["0"]
    assert gate["waiting"] and not gate["passed"]
    assert gate["note"] == "waiting for data: 0/20 inferences"
    waiting = [n for n in sim.notes if n.kind == "gates_waiting"]
    assert len(waiting) == 1 and "error_rate<0.05 0/20 inferences" in waiting[0].message
    # Re-measured every few seconds, not every tick.
    assert len(sim.gate_calls) <= 60 / GATE_RECHECK_S + 2

    # What an operator sees: the API's view, and fleetctl's rendering of it.
    view = detail(r, [])
    assert view["waiting"] == "waiting for data: error_rate<0.05 0/20 inferences"
    assert view["gates_deadline"] == (r.state.settled_at or 0) + 60.0 + 1800.0
    assert view["waves"][0]["waiting"] == view["waiting"] and view["waves"][1]["waiting"] == ""
    text = rendered(view)
    assert "waiting for data: error_rate<0.05 0/20 inferences (without it they fail at" in text
    assert "0/20 inferences" in text and "waiting for data" in text.split("gates (last")[1]

    sim.traffic = lambda wave: 10.0
    sim.run(GATE_RECHECK_S + 1)
    assert r.state.wave >= 1
    [gate] = r.state.gate_results["0"]
    assert gate["passed"] and not gate["waiting"] and gate["samples"] >= 20
    sim.run(600)
    assert r.status == "completed"


def test_a_gate_without_data_fails_at_the_timeout_and_rolls_back() -> None:
    sim = make(20, probation_s=60.0, gate_timeout_s=600.0)
    sim.traffic = lambda wave: 0.01  # 6 inferences in the whole wait: not enough
    sim.run(2000)
    r = sim.rollout
    assert r.status == "rolled_back"
    assert r.state.reason == (
        "automatic rollback: wave 0 failed its gates: "
        "error_rate<0.05 (too little data: 6 of 20 inferences from the wave within 10m)"
    )
    settled = r.state.settled_at or 0.0
    # On time: not one tick before the deadline, not a recheck later.
    assert halted_at(sim.notes) == settled + 60.0 + 600.0
    [gate] = r.state.gate_results["0"]
    assert not gate["passed"] and not gate["waiting"] and gate["samples"] == 6
    view = detail(r, [])
    assert view["waiting"] == "" and view["gates_deadline"] is None
    assert "FAIL: too little data: 6 of 20 inferences" in rendered(view)
    assert len(sim.sent) == 1 and len(sim.reverted) == 1


def test_a_timeout_without_auto_rollback_halts_and_resume_waits_afresh() -> None:
    sim = make(10, probation_s=30.0, gate_timeout_s=60.0, auto_rollback=False)
    sim.traffic = lambda wave: 0.0
    sim.run(300)
    r = sim.rollout
    assert r.status == "halted" and "no data: 0 of 20 inferences" in r.state.reason
    assert "within 1m" in r.state.reason
    sim.traffic = lambda wave: 5.0
    sim.apply(r.resume(sim.now))
    sim.run(600)
    assert r.status == "completed"


def test_opting_out_passes_a_gate_with_no_data_and_says_so() -> None:
    sim = make(20, gates_allow_no_data=True)
    sim.traffic = lambda wave: 0.0
    sim.run(600)
    r = sim.rollout
    assert r.status == "completed"
    assert all(
        g["passed"] and g["note"] == "no data" for w in r.state.gate_results.values() for g in w
    )
    assert not any(n.kind == "gates_waiting" for n in sim.notes)


def test_a_failing_gate_with_enough_data_halts_without_waiting_for_the_others() -> None:
    sim = make(
        10,
        probation_s=30.0,
        gates=(parse_gate("error_rate<0.05"), parse_gate("accuracy>=0.9")),
    )
    sim.error_rate = lambda wave: 0.5
    sim.run(40)  # accuracy has no data in the sim; error_rate is judged and fails
    r = sim.rollout
    assert r.status == "rolled_back" and "error_rate<0.05 (measured 0.5)" in r.state.reason


def test_gates_that_need_no_traffic_are_judged_as_before() -> None:
    sim = make(10, gates=(parse_gate("install_success_rate>=1"),))
    sim.traffic = lambda wave: 0.0
    sim.run(600)
    assert sim.rollout.status == "completed"
    assert sim.rollout.state.gate_results["0"][0]["value"] == 1.0


def test_min_samples_is_per_plan() -> None:
    sim = make(10, probation_s=30.0, gate_min_samples=400, gate_timeout_s=3600.0)
    sim.traffic = lambda wave: 10.0  # 300 at the end of probation, 400 ten seconds later
    sim.run(35)
    assert sim.rollout.state.gate_results["0"][0]["note"].startswith("waiting for data: 3")
    sim.run(20)
    assert sim.rollout.state.wave >= 1


def test_plans_and_states_stored_before_these_fields_load_with_the_defaults() -> None:
    new = plan().to_json()
    old = {k: v for k, v in new.items() if not k.startswith("gate_") and "no_data" not in k}
    loaded = RolloutPlan.from_json(old)
    assert (loaded.gate_min_samples, loaded.gate_timeout_s, loaded.gates_allow_no_data) == (
        20,
        1800.0,
        False,
    )
    p = plan(gate_min_samples=5, gate_timeout_s=90.0, gates_allow_no_data=True)
    assert RolloutPlan.from_json(p.to_json()) == p
    state = make(1).rollout.state.to_json()
    del state["gates_checked_at"]
    assert RolloutState.from_json(state).gates_checked_at is None
