"""The rollout engine, scenario by scenario, driven by a simulated edge (no I/O)."""

from __future__ import annotations

import random

import pytest

from edgefleet_contract.errors import RolloutError
from fleet_server.rollouts.champion import Arm
from fleet_server.rollouts.engine import Candidate, Rollout, _arm, champion_of
from fleet_server.rollouts.gates import parse_gate
from fleet_server.rollouts.model import DeviceProgress, Dispatch, Note
from fleet_server.rollouts.plan import Share

from .rollout_sim import ARTIFACT, Sim, make, plan, reverting_canary, silent_canary


def test_canary_then_waves_then_completed() -> None:
    sim = make(20)
    sim.run(600)
    r = sim.rollout
    assert r.status == "completed"
    assert r.state.ends == [1, 5, 10, 20]
    assert {d.status for d in r.devices.values()} == {"succeeded"}
    waves_in_send_order = [r.devices[d].wave for _, d in sim.sent]
    assert waves_in_send_order == sorted(waves_in_send_order)
    assert [g.wave for g in sim.gate_calls] == [0, 1, 2, 3]
    assert all(done <= end for done, end in sim.max_dispatched_share)
    assert sim.reverted == []
    kinds = [n.kind for n in sim.notes]
    assert kinds[0] == "started" and kinds[-1] == "completed"


def test_a_wave_starts_only_after_probation() -> None:
    sim = make(8, probation_s=300.0)
    sim.run(200)
    r = sim.rollout
    assert r.state.wave == 0 and r.state.phase == "probation"
    assert len(sim.sent) == 1
    sim.run(200)
    assert r.state.wave >= 1


def test_failing_gate_in_canary_halts_and_rolls_the_canary_back() -> None:
    sim = make(20)
    sim.error_rate = lambda wave: 0.2
    sim.run(300)
    r = sim.rollout
    assert r.status == "rolled_back"
    assert "error_rate<0.05" in r.state.reason and "0.2" in r.state.reason
    canary = [d for d in r.devices.values() if d.wave == 0]
    assert sim.reverted == [canary[0].device_id]
    assert canary[0].status == "rolled_back"
    assert all(d.status == "skipped" for d in r.devices.values() if d.wave > 0)
    assert r.state.gate_results["0"][0]["passed"] is False
    assert len(sim.sent) == 1


def test_failing_gate_without_auto_rollback_halts_and_waits() -> None:
    sim = make(20, auto_rollback=False)
    sim.error_rate = lambda wave: 0.2 if wave == 1 else 0.0
    sim.run(600)
    r = sim.rollout
    assert r.status == "halted"
    assert sim.reverted == []
    assert len(sim.sent) == 5  # canary + wave 1, never wave 2
    sim.error_rate = lambda wave: 0.0
    sim.apply(r.resume(sim.now))
    sim.run(600)
    assert r.status == "completed"


def test_device_failures_beyond_the_budget_halt() -> None:
    sim = make(20, max_failures=1)
    order = sorted(sim.rollout.devices.values(), key=lambda d: d.order)
    sim.fail = {order[1].device_id, order[2].device_id}  # both in wave 1
    sim.run(600)
    r = sim.rollout
    assert r.status == "rolled_back"
    assert "2 device(s) failed" in r.state.reason
    touched = {d for _, d in sim.sent}
    assert set(sim.reverted) == touched


def test_offline_device_is_retried_when_it_returns() -> None:
    sim = make(10, offline=frozenset({"d003"}))
    sim.run(400)
    r = sim.rollout
    d = r.devices["d003"]
    assert d.status == "offline"
    assert r.status == "wave" and r.state.phase == "finishing"
    sim.apply(r.device_report("d003", now=sim.now, online=True))
    sim.run(30)
    assert d.status == "succeeded" and d.attempts == 1
    assert r.status == "completed"


def test_devices_offline_for_the_whole_rollout_are_skipped_after_the_grace() -> None:
    sim = make(10, offline=frozenset({"d003"}), offline_grace_s=120.0)
    sim.run(600)
    assert sim.rollout.status == "completed"
    assert sim.rollout.devices["d003"].status == "skipped"


def test_pacing_and_jitter_are_deterministic_and_bounded() -> None:
    a = make(40, pace_per_min=30.0, jitter_s=10.0, canary=Share(count=0))
    b = make(40, pace_per_min=30.0, jitter_s=10.0, canary=Share(count=0))
    a.run(400, step=0.5)
    b.run(400, step=0.5)
    assert a.sent == b.sent
    first = [t for t, d in a.sent if a.rollout.devices[d].wave == 1]
    # 10 devices at 2 s apart plus up to 10 s jitter: all within 18 + 10 s of the start
    assert first[-1] - first[0] <= 18 + 10 + 0.5
    assert first[-1] - first[0] >= 8  # not all at once
    c = make(40, pace_per_min=30.0, jitter_s=10.0, canary=Share(count=0), seed=7)
    c.run(400, step=0.5)
    assert c.sent != a.sent


def test_pause_stops_dispatch_and_resume_continues() -> None:
    sim = make(20, pace_per_min=6.0)
    sim.run(30)
    r = sim.rollout
    sim.apply(r.pause(sim.now))
    sent = len(sim.sent)
    sim.run(600)
    assert len(sim.sent) == sent and r.status == "paused"
    sim.apply(r.resume(sim.now))
    sim.run(2000)
    assert r.status == "completed"


def test_abort_skips_the_rest_and_reverts_nothing() -> None:
    sim = make(20)
    sim.run(100)
    r = sim.rollout
    sim.apply(r.abort(sim.now))
    sent = len(sim.sent)
    sim.run(300)
    assert r.status == "aborted" and len(sim.sent) == sent and sim.reverted == []
    assert all(d.status in ("succeeded", "skipped") for d in r.devices.values())
    with pytest.raises(RolloutError, match="nothing to abort"):
        r.abort(sim.now)


def test_manual_rollback_after_completion_reverts_exactly_the_updated_devices() -> None:
    sim = make(12)
    sim.run(600)
    r = sim.rollout
    assert r.status == "completed"
    sim.apply(r.rollback(sim.now))
    assert r.status == "rolled_back"
    assert sorted(sim.reverted) == sorted(d for _, d in sim.sent)
    with pytest.raises(RolloutError):
        r.rollback(sim.now)


def test_rollback_waits_for_online_devices_to_confirm() -> None:
    sim = make(5)
    sim.run(40)
    sim.answer = False
    r = sim.rollout
    sim.apply(r.rollback(sim.now))
    assert r.status == "rolling_back"
    d = r.devices[sim.reverted[0]]
    assert d.status == "reverting"
    sim.apply(r.device_report(d.device_id, now=sim.now, applied_version=d.revert_version))
    assert r.status == "rolled_back"


def test_a_silent_device_fails_after_the_device_timeout() -> None:
    sim = make(4, device_timeout_s=100.0, auto_rollback=False)
    sim.answer = False
    sim.run(150)
    r = sim.rollout
    canary = sim.canary
    assert canary.status == "failed" and "no commit" in canary.detail
    assert r.status == "halted"


def test_devices_already_on_the_artifact_are_skipped() -> None:
    candidates = [Candidate("a", True, "digits@1.3.0"), Candidate("b", True, "digits@1.2.0")]
    r = Rollout.create("r-x", plan(), candidates, now=0.0, actor="alice")
    assert r.devices["a"].status == "skipped" and r.devices["b"].status == "queued"
    assert ARTIFACT.label == "digits@1.3.0"


def test_state_errors_are_clear() -> None:
    sim = make(3)
    with pytest.raises(RolloutError, match="only paused or halted"):
        sim.rollout.resume(sim.now)
    sim.run(400)
    with pytest.raises(RolloutError, match="only a running rollout can pause"):
        sim.rollout.pause(sim.now)


def test_no_devices_completes_at_once() -> None:
    r = Rollout.create("r-0", plan(), [], now=0.0, actor="alice")
    r.tick(1.0)
    r.tick(2.0)
    assert r.status == "completed"


def test_an_offline_canary_holds_the_rollout_until_it_returns() -> None:
    sim = make(6, offline=frozenset({"d000", "d001", "d002", "d003", "d004", "d005"}))
    sim.run(300)
    r = sim.rollout
    assert r.status == "canary" and sim.sent == []
    canary = sim.canary
    sim.apply(r.device_report(canary.device_id, now=sim.now, online=True))
    sim.run(300)
    assert canary.status == "succeeded" and r.state.wave >= 1


def test_a_device_that_runs_the_artifact_counts_without_an_update_report() -> None:
    sim, r, canary = silent_canary()
    assert canary.status == "sent" and canary.desired_version is not None
    r.device_report(
        canary.device_id, now=sim.now, applied_version=canary.desired_version, running="x@9"
    )
    assert canary.status == "sent"
    r.device_report(
        canary.device_id,
        now=sim.now,
        applied_version=canary.desired_version,
        running="digits@1.3.0",
    )
    assert canary.status == "succeeded"


def test_a_device_that_gives_up_after_committing_counts_as_failed() -> None:
    sim = make(3, auto_rollback=False)
    sim.run(2)
    r = sim.rollout
    canary = sim.canary
    assert canary.status == "succeeded"
    sim.apply(
        r.device_report(
            canary.device_id,
            now=sim.now,
            phase="rolled_back",
            update_version=canary.desired_version,
            running="digits@1.3.0",
            applied_version=canary.desired_version,
            error="health failed after commit",
        )
    )
    assert canary.status == "failed" and canary.detail == "health failed after commit"
    assert r.status == "halted"


def test_an_update_report_in_probation_is_not_taken_for_success() -> None:
    sim, r, canary = silent_canary()
    v = canary.desired_version
    r.device_report(
        canary.device_id,
        now=sim.now,
        phase="probation",
        update_version=v,
        applied_version=v,
        running="digits@1.3.0",
    )
    assert canary.status == "probation"


def test_health_is_recorded_and_a_failing_updated_device_noted() -> None:
    sim = make(3)
    sim.run(2)
    r = sim.rollout
    canary = sim.canary
    out = r.device_report(canary.device_id, now=sim.now, health="failed")
    assert canary.health == "failed"
    assert [(n.kind, n.device_id) for n in out if hasattr(n, "kind")] == [
        ("device_unhealthy", canary.device_id)
    ]
    assert r.device_report(canary.device_id, now=sim.now, health="failed") == []


def test_a_revert_counts_once_the_device_runs_its_previous_version() -> None:
    sim, r, canary = reverting_canary()
    r.device_report(canary.device_id, now=sim.now, applied_version=9, running="digits@1.3.0")
    assert canary.status == "reverting" and r.status == "rolling_back"
    r.device_report(canary.device_id, now=sim.now, applied_version=9, running="digits@1.2.0")
    assert canary.status == "rolled_back" and r.status == "rolled_back"


def test_a_revert_that_fails_on_the_device_is_reported() -> None:
    sim, r, canary = reverting_canary()
    out = r.device_report(
        canary.device_id,
        now=sim.now,
        applied_version=9,
        phase="failed",
        update_version=9,
        running="digits@1.3.0",
    )
    assert canary.status == "rolled_back" and "could not go back to digits@1.2.0" in canary.detail
    assert next(n.kind for n in out if hasattr(n, "kind")) == "revert_failed"


def test_an_update_that_cannot_be_delivered_fails_the_device_and_then_its_revert() -> None:
    sim = make(8)
    sim.answer = False
    sim.run(3)
    canary = sim.canary
    assert canary.status == "sent"
    sim.apply(sim.rollout.not_delivered(canary.device_id, "device deleted", sim.now))
    assert (canary.detail, canary.finished_at) == ("device deleted", sim.now)
    assert sim.rollout.state.reason == "automatic rollback: 1 device(s) failed (at most 0 allowed)"
    assert canary.status == "reverting"  # the failure rolled the rollout back
    sim.apply(sim.rollout.not_delivered(canary.device_id, "store refused", sim.now + 1))
    assert (canary.status, canary.detail) == ("rolled_back", "revert not delivered: store refused")
    assert canary.finished_at == sim.now  # when it failed, not when its revert did


def test_a_rolled_back_rollout_sums_its_devices_up_by_status() -> None:
    sim = make(8)
    sim.answer = False
    sim.run(3)
    sim.apply(sim.rollout.not_delivered(sim.canary.device_id, "device deleted", sim.now))
    sim.apply(sim.rollout.not_delivered(sim.canary.device_id, "store refused", sim.now))
    sim.run(2)  # the next tick sees every revert settled
    done = [n.message for n in sim.notes if n.kind == "rolled_back"]
    assert done == ["1 rolled_back, 7 skipped"]
    assert sim.rollout.counts() == [
        {"rolled_back": 1},
        {"skipped": 1},
        {"skipped": 2},
        {"skipped": 4},
    ]


def test_a_completed_rollout_counts_each_waves_devices() -> None:
    sim = make(8)
    sim.run(3000)
    assert sim.rollout.status == "completed"
    assert sim.rollout.counts() == [
        {"succeeded": 1},
        {"succeeded": 1},
        {"succeeded": 2},
        {"succeeded": 4},
    ]


@pytest.mark.parametrize(
    ("accuracy", "labels", "arm"),
    [
        (None, 5, Arm(0, 0)),
        (0.9, 0, Arm(0, 0)),
        (0.9, 1, Arm(1, 1)),
        (0.0, 10, Arm(0, 10)),
        (0.94, 50, Arm(47, 50)),
        (1.5, 10, Arm(10, 10)),  # an estimate past 1 is clipped to the labels
    ],
)
def test_an_accuracy_and_its_labels_count_back_to_an_arm(
    accuracy: float | None, labels: int, arm: Arm
) -> None:
    assert _arm(accuracy, labels) == arm


def test_a_device_that_fails_its_update_is_in_the_event_log_with_its_error() -> None:
    sim = make(8)
    sim.fail = {sim.canary.device_id}
    sim.run(200)
    assert [(n.ts, n.kind, n.message, n.device_id) for n in sim.notes[2:4]] == [
        (1001.0, "device_failed", "boom", sim.canary.device_id),
        (1001.0, "halted", "1 device(s) failed (at most 0 allowed)", None),
    ]
    assert sim.canary.detail == "boom"


def test_a_device_back_online_is_queued_again_at_once() -> None:
    sim = make(4, offline=frozenset({"d001"}))
    sim.run(400)
    late = sim.rollout.devices["d001"]
    assert late.status == "offline"
    out = sim.rollout.device_report("d001", now=sim.now, online=True)
    assert out == [Note(sim.now, "retry", "back online; queued again", "d001")]
    assert (late.status, late.due_at) == ("queued", sim.now)  # jitter_s is 0 in these plans
    assert sim.rollout.device_report("d001", now=sim.now, online=True) == []  # already queued


def test_a_device_reporting_failed_health_after_its_update_is_noted() -> None:
    sim = make(8)
    sim.run(3)
    canary = sim.canary
    out = sim.rollout.device_report(canary.device_id, now=sim.now, health="failed")
    assert out == [Note(sim.now, "device_unhealthy", "reports health failed", canary.device_id)]
    other = next(d for d in sim.rollout.devices.values() if d.status == "queued")
    assert sim.rollout.device_report(other.device_id, now=sim.now, health="failed") == []


def test_a_rollout_is_created_with_its_id_author_and_times() -> None:
    s = make(3).rollout.state
    assert (s.id, s.created_by, s.created_at, s.updated_at) == ("r-test", "alice", 1000.0, 1000.0)
    assert (s.status, s.parent) == ("pending", None)


def test_the_parent_is_what_most_devices_run_of_the_same_model() -> None:
    p = plan()
    runs = ["alpha@1.0", "digits@1.2.0", None, "digits@1.3.0", "alpha@1.0"]
    assert champion_of(p, [Candidate(f"d{i}", True, r) for i, r in enumerate(runs)]) == (
        "digits@1.2.0"
    )


def test_the_event_log_names_each_wave_and_its_gates_with_the_times() -> None:
    sim = make(8)
    sim.run(3000)
    r = sim.rollout
    started = [(n.ts, n.message) for n in sim.notes if n.kind == "wave_started"]
    assert [m for _, m in started] == [
        "canary: 1 devices",
        "wave 1: 1 devices",
        "wave 2: 2 devices",
        "wave 3: 4 devices",
    ]
    passed = [(n.ts, n.message, n.device_id) for n in sim.notes if n.kind == "gates_passed"]
    assert passed == [(g.until, f"wave {g.wave} passed its gates", None) for g in sim.gate_calls]
    for g in sim.gate_calls:  # the gates look at the wave's devices that landed, since the last
        devices = r.wave_devices(g.wave)
        assert g.device_ids == tuple(d.device_id for d in devices)
        assert g.since == max(d.finished_at or 0 for d in devices)
    assert r.state.updated_at == sim.now


def test_devices_are_paced_by_the_interval_plus_their_own_jitter() -> None:
    sim = make(20, jitter_s=0.5, pace_per_min=30.0)
    sim.run(3000)
    r = sim.rollout
    assert r.status == "completed"
    starts = [n.ts for n in sim.notes if n.kind == "wave_started"]
    for wave, start in enumerate(starts):
        for i, d in enumerate(r.wave_devices(wave)):
            jitter = random.Random(f"{r.plan.seed}:{d.device_id}").uniform(0, 0.5)
            assert 0 < jitter < 0.5
            assert d.due_at == start + i * 2.0 + jitter
            assert d.attempts == 1


def test_a_device_back_online_waits_its_jitter() -> None:
    sim = make(4, offline=frozenset({"d001"}), jitter_s=0.5)
    sim.run(400)
    out = sim.rollout.device_report("d001", now=sim.now, online=True)
    assert out == [Note(sim.now, "retry", "back online; queued again", "d001")]
    jitter = random.Random(f"{sim.rollout.plan.seed}:d001").uniform(0, 0.5)
    assert sim.rollout.devices["d001"].due_at == sim.now + jitter


def late_and_offline(**plan: object) -> tuple[Sim, DeviceProgress]:
    """A two-device rollout of ``plan`` and its device due after the canary, taken offline."""
    sim = make(2, **plan)
    late = next(d for d in sim.rollout.devices.values() if d.wave > 0)
    late.online = False
    return sim, late


def test_a_device_offline_at_its_turn_is_noted_when_its_wave_starts() -> None:
    sim, late = late_and_offline()
    sim.run(400)
    start = next(n.ts for n in sim.notes if n.message == f"wave {late.wave}: 1 devices")
    mine = [n for n in sim.notes if n.device_id == late.device_id]
    assert mine == [Note(start, "offline", "offline at its turn; will retry", late.device_id)]
    assert (late.status, late.attempts, late.sent_at) == ("offline", 0, None)


def test_an_offline_device_is_skipped_exactly_when_the_grace_ends() -> None:
    sim, late = late_and_offline(offline_grace_s=100.0)
    sim.run(200)
    r = sim.rollout
    assert r.state.phase == "finishing"
    deadline = (r.state.settled_at or 0) + 100.0
    done = [n for n in sim.notes if n.kind == "completed"]
    assert done == [Note(deadline, "completed", "1 skipped, 1 succeeded")]
    assert (late.status, late.detail) == ("skipped", "offline for the whole rollout")


def test_the_rollout_does_not_complete_while_a_late_device_is_queued_or_updating() -> None:
    sim, late = late_and_offline(jitter_s=0.5)
    sim.run(200)
    r = sim.rollout
    assert r.state.phase == "finishing"
    r.device_report(late.device_id, now=sim.now, online=True)
    assert r.tick(sim.now) == [] and r.status == "wave"  # queued: due after its jitter
    sim.now += 1
    sent = r.tick(sim.now)
    assert sent == [Dispatch(late.device_id)]
    assert r.status == "wave" and late.status == "sent"  # updating: not done either
    sim.apply(sent)
    sim.run(5)
    assert r.status == "completed" and late.status == "succeeded"


def test_a_device_that_stays_silent_fails_exactly_at_its_timeout() -> None:
    _sim, r, canary = silent_canary()
    sent = canary.sent_at or 0
    assert r.tick(sent + 3599.0) == [] and canary.status == "sent"
    out = r.tick(sent + 3600.0)
    assert out[:2] == [
        Note(sent + 3600.0, "device_failed", "no commit within 3600s", canary.device_id),
        Note(sent + 3600.0, "halted", "1 device(s) failed (at most 0 allowed)"),
    ]
    assert (canary.status, canary.finished_at) == ("reverting", sent + 3600.0)


def test_failures_while_paused_still_halt() -> None:
    sim, r, canary = silent_canary()
    r.pause(sim.now)
    out = r.device_report(
        canary.device_id, now=sim.now, phase="failed", update_version=canary.desired_version
    )
    assert out[0] == Note(sim.now, "device_failed", "the device reported failed", canary.device_id)
    assert r.state.reason == "automatic rollback: 1 device(s) failed (at most 0 allowed)"
    assert (canary.phase, canary.finished_at) == ("failed", sim.now)


def test_after_a_resume_only_new_failures_count() -> None:
    sim = make(8, auto_rollback=False)
    order = sorted(sim.rollout.devices.values(), key=lambda d: d.order)
    sim.fail = {order[0].device_id, order[1].device_id}
    sim.run(100)
    r = sim.rollout
    assert r.status == "halted"
    sim.apply(r.resume(sim.now))
    sim.run(300)
    assert r.status == "halted"
    assert r.state.reason == "1 device(s) failed (at most 0 allowed)"
    assert r.failures == 2


def test_the_install_success_rate_counts_failed_devices() -> None:
    sim = make(
        20, max_failures=3, gates=(parse_gate("install_success_rate>=0.7"),), auto_rollback=False
    )
    wave2 = sim.rollout.wave_devices(2)
    assert len(wave2) == 5
    sim.fail = {wave2[0].device_id}
    sim.run(3000)
    assert sim.rollout.state.gate_results["2"][0]["value"] == 0.8
    assert sim.rollout.status == "completed"
