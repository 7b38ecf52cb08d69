"""The rollout engine reading what devices report: update phases, reverts, the figures a
wave's gates and the parent gate count (no I/O; the scenarios are in test_rollout_engine)."""

from __future__ import annotations

import pytest

from fleet_server.rollouts.gates import parse_gate
from fleet_server.rollouts.model import Dispatch, EvaluateGates, Note

from .rollout_sim import ARTIFACT, gating_canary, make, reverting_canary, silent_canary


def test_the_phase_a_device_reports_is_kept() -> None:
    sim, r, canary = silent_canary()
    v = canary.desired_version
    r.device_report(canary.device_id, now=sim.now, phase="probation", update_version=v)
    assert (canary.status, canary.phase) == ("probation", "probation")
    out = r.device_report(canary.device_id, now=sim.now, health="failed")
    assert out == [Note(sim.now, "device_unhealthy", "reports health failed", canary.device_id)]


def test_an_update_report_without_its_version_is_not_ours() -> None:
    sim, r, canary = silent_canary()
    r.device_report(canary.device_id, now=sim.now, phase="committed")
    r.device_report(canary.device_id, now=sim.now, running=ARTIFACT.label)  # applied unknown
    assert canary.status == "sent"
    r.device_report(canary.device_id, now=sim.now, online=False)
    assert r.device_report(canary.device_id, now=sim.now, online=True) == []
    assert canary.status == "sent"  # only an offline device is queued again


def test_a_device_running_the_artifact_counts_whatever_else_it_reports() -> None:
    sim, r, canary = silent_canary()
    v = canary.desired_version
    r.device_report(
        canary.device_id, now=sim.now, update_version=v, applied_version=v, running=ARTIFACT.label
    )
    assert canary.status == "succeeded"
    sim2, r2, canary2 = silent_canary()
    r2.device_report(
        canary2.device_id,
        now=sim2.now,
        phase="committed",
        update_version=0,  # an older update's report
        applied_version=canary2.desired_version,
        running=ARTIFACT.label,
    )
    assert canary2.status == "succeeded"


def test_a_device_that_fails_after_committing_has_its_time_and_reason() -> None:
    sim, r, canary = silent_canary()
    v = canary.desired_version
    r.device_report(canary.device_id, now=sim.now, phase="committed", update_version=v)
    out = r.device_report(canary.device_id, now=sim.now + 7, phase="failed", update_version=v)
    assert (canary.status, canary.finished_at) == ("reverting", sim.now + 7)
    assert out[0] == Note(
        sim.now + 7, "device_failed", "the device reported failed", canary.device_id
    )


def test_an_update_delivered_without_a_previous_target_has_none() -> None:
    sim, r, canary = silent_canary()
    r.delivered(canary.device_id, 5, sim.now)
    assert (canary.desired_version, canary.previous) == (5, None)
    assert r.dirty >= {canary.device_id} and None not in r.dirty


def test_a_revert_waits_for_its_own_version_and_its_time_is_kept() -> None:
    sim, r, canary = reverting_canary()
    prev = "digits@1.2.0"
    r.device_report(canary.device_id, now=sim.now, applied_version=8, running=prev)
    assert canary.status == "reverting"
    old = r.device_report(
        canary.device_id,
        now=sim.now,
        applied_version=9,
        phase="committed",
        update_version=1,  # the update's report, not the revert's
        running=ARTIFACT.label,
    )
    assert old == [] and canary.status == "reverting"
    out = r.device_report(canary.device_id, now=sim.now + 4, applied_version=9, running=prev)
    assert (canary.status, canary.finished_at, canary.detail) == ("rolled_back", sim.now + 4, "")
    assert out == [Note(sim.now + 4, "rolled_back", "1 rolled_back, 2 skipped")]
    r.device_report(canary.device_id, now=sim.now + 9, applied_version=9, running=prev)
    assert canary.finished_at == sim.now + 4


@pytest.mark.parametrize("phase", ["committed", "failed", "rolled_back"])
def test_a_revert_the_device_settled_elsewhere_is_reported(phase: str) -> None:
    sim, r, canary = reverting_canary()
    now = sim.now + 3
    out = r.device_report(
        canary.device_id,
        now=now,
        applied_version=9,
        phase=phase,
        update_version=9,
        running=ARTIFACT.label,
    )
    detail = f"the device could not go back to digits@1.2.0 ({phase})"
    assert out == [
        Note(now, "revert_failed", detail, canary.device_id),
        Note(now, "rolled_back", "1 rolled_back, 2 skipped"),
    ]


def test_a_revert_to_an_unnamed_target_counts_once_applied() -> None:
    sim, r, canary = silent_canary()
    r.delivered(canary.device_id, canary.desired_version or 0, sim.now, {"name": "digits"})
    r.rollback(sim.now)
    r.delivered(canary.device_id, 9, sim.now)
    out = r.device_report(canary.device_id, now=sim.now, applied_version=9, running="x@1")
    assert canary.status == "rolled_back" and canary.detail == ""
    assert [n.kind for n in out if isinstance(n, Note)] == ["rolled_back"]


def test_an_unconfirmed_revert_gives_up_at_the_device_timeout() -> None:
    _sim, r, canary = reverting_canary()
    began = canary.finished_at or 0
    assert r.tick(began + 3599.0) == [] and r.status == "rolling_back"
    out = r.tick(began + 3600.0)
    assert (canary.status, canary.detail) == ("rolled_back", "revert sent; not confirmed in time")
    assert out == [Note(began + 3600.0, "rolled_back", "1 rolled_back, 2 skipped")]
    assert (r.state.finished_at, r.state.updated_at) == (began + 3600.0, began + 3600.0)


def test_figures_for_another_wave_are_ignored() -> None:
    sim, r = gating_canary()
    asked = r.tick(sim.now)
    assert [type(a).__name__ for a in asked] == ["EvaluateGates"]
    assert r.gates_measured(1, {"error_rate": 0.0}, sim.now, {"error_rate": 1000}) == []
    assert r.state.phase == "gating" and "1" not in r.state.gate_results


def test_the_parent_gate_without_label_counts_has_nothing_to_compare() -> None:
    sim, r = gating_canary(running="digits@1.2.0")
    r.tick(sim.now)
    figures = {"error_rate": 0.0, "accuracy": 0.9, "parent_accuracy": 0.9}
    out = r.gates_measured(0, figures, sim.now, {"error_rate": 1000})
    assert [n.kind for n in out if isinstance(n, Note)] == ["gates_passed", "wave_started"]
    parent = r.state.gate_results["0"][-1]
    assert (parent["metric"], parent["value"], parent["passed"]) == (
        "accuracy_vs_parent",
        None,
        True,
    )
    assert (parent["samples"], parent["parent_samples"], parent["waiting"]) == (0, 0, False)
    assert parent["note"].startswith("digits@1.2.0 has no labelled answers and no trusted estimate")


def test_no_devices_sum_up_to_no_devices() -> None:
    sim = make(0)
    sim.run(2)
    assert [n.message for n in sim.notes if n.kind == "completed"] == ["no devices"]


def _parent_gate(
    figures: dict[str, float | None], samples: dict[str, int], **kw: object
) -> tuple[list[str], dict[str, object]]:
    """The canary's champion/challenger gate over ``figures`` (parent digits@1.2.0): the
    event log kinds of the answer and the gate's result."""
    sim, r = gating_canary(running="digits@1.2.0", **kw)
    r.tick(sim.now)
    out = r.gates_measured(
        0, {"error_rate": 0.0, **figures}, sim.now, {"error_rate": 1000, **samples}
    )
    return [n.kind for n in out if isinstance(n, Note)], r.state.gate_results["0"][-1]


def test_the_parent_gate_compares_labels_where_both_have_them() -> None:
    """Even with label-free estimates at hand."""
    kinds, gate = _parent_gate(
        {"accuracy": 0.9, "parent_accuracy": 0.9}
        | {"accuracy_estimate": 0.5, "parent_accuracy_estimate": 0.9},
        {"accuracy": 1000, "parent_accuracy": 1000}
        | {"accuracy_estimate": 1000, "parent_accuracy_estimate": 1000},
    )
    assert kinds == ["gates_passed", "wave_started"]
    assert (gate["gate"], gate["unit"]) == (
        "accuracy vs digits@1.2.0 >= -5pt at 95%",
        "labelled answers",
    )
    assert (gate["samples"], gate["parent_samples"], gate["value"]) == (1000, 1000, 0.0)


def test_the_parent_gate_falls_back_to_estimates_and_counts_none_missing() -> None:
    kinds, gate = _parent_gate({"accuracy_estimate": 0.9, "parent_accuracy_estimate": 0.9}, {})
    assert kinds == ["gates_passed", "wave_started"]
    assert gate["gate"] == "accuracy vs digits@1.2.0 >= -5pt at 95% (label-free estimate)"
    assert (gate["unit"], gate["samples"], gate["parent_samples"]) == ("answers (estimated)", 0, 0)


@pytest.mark.parametrize(("allow", "waiting"), [(True, False), (False, True)])
def test_the_parent_gate_without_new_labels_waits_unless_no_data_is_allowed(
    allow: bool, waiting: bool
) -> None:
    kinds, gate = _parent_gate(
        {"accuracy": None, "parent_accuracy": 0.9},
        {"parent_accuracy": 1000},
        gates_allow_no_data=allow,
    )
    assert kinds == (["gates_waiting"] if waiting else ["gates_passed", "wave_started"])
    assert (gate["waiting"], gate["passed"], gate["parent_samples"]) == (waiting, not waiting, 1000)


def test_the_parent_gate_notes_its_labels_arriving_beside_other_gates() -> None:
    gates = (parse_gate("error_rate<0.05"), parse_gate("error_rate<0.1"))
    sim, r = gating_canary(running="digits@1.2.0", gates=gates)
    r.tick(sim.now)
    figures = {"error_rate": 0.0, "accuracy": 0.9, "parent_accuracy": 0.9}
    r.gates_measured(
        0, figures, sim.now, {"error_rate": 1000, "accuracy": 5, "parent_accuracy": 5000}
    )
    assert r.state.labels_arrived_at == sim.now


def test_a_revert_of_an_undelivered_update_waits_for_the_revert_to_apply() -> None:
    sim = make(8)
    sim.answer = False
    sim.run(3)
    canary = sim.canary
    sim.rollout.not_delivered(canary.device_id, "device deleted", sim.now)
    assert canary.status == "reverting"
    sim.rollout.delivered(canary.device_id, 1, sim.now)
    sim.rollout.device_report(canary.device_id, now=sim.now, online=True, running="digits@1.2.0")
    assert canary.status == "reverting"
    sim.rollout.device_report(canary.device_id, now=sim.now, applied_version=1)
    assert canary.status == "rolled_back"


def test_a_silent_commit_with_no_probation_asks_for_the_gates_at_once() -> None:
    sim = make(3, probation_s=0.0)
    sim.answer = False
    sim.run(2)
    canary = sim.canary
    v = canary.desired_version
    out = sim.rollout.device_report(
        canary.device_id, now=sim.now, applied_version=v, running=ARTIFACT.label
    )
    assert out == [EvaluateGates(0, (canary.device_id,), sim.now, sim.now)]


def test_the_parent_gate_notes_labels_arriving_only_when_there_are_more() -> None:
    sim, r = gating_canary(running="digits@1.2.0")
    r.tick(sim.now)
    figures = {"error_rate": 0.0, "accuracy": 0.9, "parent_accuracy": 0.9}
    r.gates_measured(0, figures, sim.now, {"error_rate": 1000, "parent_accuracy": 5000})
    assert r.state.labels_arrived_at is None  # none yet from the new version
    later = sim.now + 5
    r.gates_measured(
        0, figures, later, {"error_rate": 1000, "accuracy": 1, "parent_accuracy": 5000}
    )
    assert r.state.labels_arrived_at == later


def test_devices_due_together_go_out_in_the_order_they_became_due() -> None:
    """A device back online late is queued behind the ones already waiting their turn."""
    sim = make(20)
    r = sim.rollout
    late = r.wave_devices(1)[0]
    late.online = False
    while r.state.wave < 2:
        sim.run(1)
    begun = sim.now
    r.device_report(late.device_id, now=begun + 10, online=True)
    out = r.tick(begun + 20)
    behind = [d.device_id for d in r.wave_devices(2)[1:]]
    assert out == [Dispatch(i) for i in [*behind, late.device_id]]
