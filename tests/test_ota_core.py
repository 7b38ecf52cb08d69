"""The I/O-free update core and the small disk pieces: state machine, slots, patches, journal."""

from __future__ import annotations

import json
from pathlib import Path

import bsdiff4
import pytest

from agent.updates import machine
from agent.updates.delta import apply_patch
from agent.updates.journal import Journal, JournalFile
from agent.updates.machine import HealthCounters, judge_health
from agent.updates.slots import ModelSlots
from edgefleet_contract.errors import InstallError, TrustError, UpdateError
from edgefleet_contract.messages import TargetRef

REF = TargetRef(kind="model", name="digits", version="1.1.0", target="models/digits/1.1.0/d.efpkg")


def fresh(**kw: object) -> Journal:
    j = machine.begin(REF, 3, "r-1", 100.0, probation_s=60, max_restarts=2)
    return j.model_copy(update=kw) if kw else j


def test_phases_only_move_one_step_forward() -> None:
    j = fresh()
    for phase in machine.ORDER[1:]:
        j = machine.advance(j, phase, 101.0)
    assert j.phase == "committed" and j.progress == 1.0 and j.done
    with pytest.raises(UpdateError, match="already committed"):
        machine.advance(j, "pending", 102.0)
    with pytest.raises(UpdateError, match="cannot go from pending to staging"):
        machine.advance(fresh(), "staging", 101.0)


def test_failure_before_the_switch_fails_after_it_rolls_back() -> None:
    assert machine.fail(fresh(phase="verifying"), "bad hash", 1.0).phase == "failed"
    rolled = machine.fail(fresh(phase="probation"), "error rate 50%", 1.0)
    assert rolled.phase == "rolled_back" and rolled.error == "probation: error rate 50%"


@pytest.mark.parametrize("phase", ["pending", "downloading", "verifying", "staging", "self_test"])
def test_restart_before_the_switch_starts_over_from_pending(phase: str) -> None:
    recovery = machine.recover(fresh(phase=phase, sha256="a" * 64), 200.0)
    assert recovery.action == "resume"
    assert recovery.journal.phase == "pending" and recovery.journal.attempts == 1
    assert recovery.journal.sha256 == "a" * 64  # bytes on disk stay usable


def test_endless_restarts_before_the_switch_give_up() -> None:
    recovery = machine.recover(fresh(phase="downloading", attempts=5), 200.0)
    assert recovery.action == "none" and recovery.journal.phase == "failed"
    assert "interrupted attempts" in (recovery.journal.error or "")


def test_restarts_during_probation_count_like_a_boot_counter() -> None:
    switching = machine.recover(fresh(phase="switching"), 200.0)
    assert switching.action == "switch"  # finish the switch, then a fresh probation
    assert switching.journal.phase == "switching" and switching.journal.restarts == 1
    first = machine.recover(fresh(phase="probation", restarts=0), 200.0)
    assert first.action == "probation" and first.journal.probation_until == 260.0
    first = first.journal.model_copy(update={"restarts": 1})
    second = machine.recover(first, 300.0)
    assert second.action == "probation" and second.journal.restarts == 2
    third = machine.recover(second.journal, 400.0)
    assert third.action == "revert" and "restarted 3 times" in (third.journal.error or "")


def test_terminal_journals_need_nothing() -> None:
    done = fresh(phase="committed")
    assert machine.recover(done, 1.0) == machine.Recovery(done, "none")


def test_health_judgement() -> None:
    start = HealthCounters(100, 1)
    ok = dict(max_error_rate=0.05, min_inferences=20)
    assert judge_health(start, HealthCounters(110, 6), **ok) is None  # too few to judge
    assert judge_health(start, HealthCounters(200, 5), **ok) is None  # 4%
    assert "error rate" in (judge_health(start, HealthCounters(200, 7), **ok) or "")
    assert "crashed" in (judge_health(start, HealthCounters(100, 1, crashes=1), **ok) or "")


def test_journal_round_trip_and_damage(tmp_path: Path) -> None:
    file = JournalFile(tmp_path / "updates" / "journal.json")
    assert file.load() is None
    file.save(fresh(phase="downloading", progress=0.5))
    assert file.load() == fresh(phase="downloading", progress=0.5)
    file.path.write_text('{"phase": "probat')  # torn by something other than us
    assert file.load() is None


def test_patch_that_does_not_make_the_signed_size_is_refused() -> None:
    old, new = bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 40
    patch = bsdiff4.diff(old, new)
    assert apply_patch(old, patch, expected_size=len(new)) == new
    with pytest.raises(ValueError, match="signed target"):
        apply_patch(old, patch, expected_size=len(new) + 1)
    with pytest.raises(ValueError, match="not a bsdiff4"):
        apply_patch(old, b"PK\x03\x04" + patch, expected_size=len(new))
    with pytest.raises(ValueError):
        apply_patch(old, patch[:40], expected_size=len(new))


def test_patch_bomb_is_refused() -> None:
    import bz2

    from bsdiff4.core import encode_int64

    bomb = bz2.compress(bytes(50_000_000))  # 50 MB of zeros in ~40 bytes
    control = bz2.compress(b"")
    patch = (
        b"BSDIFF40"
        + encode_int64(len(control))
        + encode_int64(len(bomb))
        + encode_int64(1000)
        + control
        + bomb
        + bz2.compress(b"")
    )
    with pytest.raises(ValueError, match="inflates past"):
        apply_patch(b"x" * 1000, patch, expected_size=1000)


def test_slots_stage_switch_revert(tmp_path: Path) -> None:
    slots = ModelSlots(tmp_path)
    v1, v2 = tmp_path / "v1.efpkg", tmp_path / "v2.efpkg"
    v1.write_bytes(b"one")
    v2.write_bytes(b"two")
    first = slots.install_initial(v1)
    assert first.name == "a" and slots.inactive_name() == "b"
    import hashlib

    staged = slots.stage(v2, "v2.efpkg", hashlib.sha256(b"two").hexdigest())
    assert staged.name == "b"
    assert slots.active() == first  # staging never touches the active slot
    slots.switch("b")
    pointer = slots.pointer()
    assert pointer is not None and pointer.active == "b" and pointer.previous == "a"
    assert not pointer.committed
    back = slots.revert()
    assert back is not None and back.name == "a"
    assert slots.describe() == {"active": "a", "a": "v1.efpkg", "b": "v2.efpkg"}
    with pytest.raises(InstallError, match="changed while"):
        slots.stage(v2, "v2.efpkg", "0" * 64)
    (tmp_path / "models" / "a" / "v1.efpkg").write_bytes(b"rot")
    assert slots.active(verify=True) is None
    assert json.loads(slots.pointer_file.read_text())["active"] == "a"


def test_boot_falls_back_to_the_previous_slot_when_the_active_one_is_damaged(
    tmp_path: Path,
) -> None:
    import hashlib

    from agent.updates import active_model_path

    slots = ModelSlots(tmp_path)
    v1, v2 = tmp_path / "v1.efpkg", tmp_path / "v2.efpkg"
    v1.write_bytes(b"one")
    v2.write_bytes(b"two")
    slots.install_initial(v1)
    slots.stage(v2, "v2.efpkg", hashlib.sha256(b"two").hexdigest())
    slots.switch("b")
    slots.commit()
    assert active_model_path(tmp_path) == tmp_path / "models" / "b" / "v2.efpkg"
    (tmp_path / "models" / "b" / "v2.efpkg").write_bytes(b"tw0")  # bit rot
    assert active_model_path(tmp_path) == tmp_path / "models" / "a" / "v1.efpkg"
    assert active_model_path(tmp_path / "nothing") is None


def test_a_deliberate_stop_during_probation_is_not_counted_as_a_crash() -> None:
    stopped = fresh(phase="probation", restarts=1, clean_stop=True)
    recovery = machine.recover(stopped, 500.0)
    assert recovery.action == "probation"
    assert recovery.journal.restarts == 1 and not recovery.journal.clean_stop


def test_a_new_update_starts_pending_with_the_policy_it_was_given() -> None:
    j = fresh()
    assert (j.desired_version, j.rollout_id, j.ref) == (3, "r-1", REF)
    assert (j.phase, j.progress, j.error, j.restarts, j.attempts) == ("pending", 0.0, None, 0, 0)
    assert (j.probation_s, j.max_restarts, j.started_at, j.updated_at) == (60, 2, 100.0, 100.0)


def test_advancing_records_progress_time_and_changes() -> None:
    j = machine.advance(fresh(), "downloading", 105.0, progress=0.25, bytes_transferred=10)
    assert (j.phase, j.progress, j.updated_at, j.bytes_transferred) == (
        "downloading",
        0.25,
        105.0,
        10,
    )
    same = machine.advance(j, "downloading", 106.0)  # staying put keeps the progress
    assert (same.phase, same.progress, same.updated_at) == ("downloading", 0.25, 106.0)
    with pytest.raises(UpdateError, match=r"^an update cannot go from downloading to pending$"):
        machine.advance(j, "pending", 107.0)
    with pytest.raises(UpdateError, match=r"^the update is already failed; start a new one$"):
        machine.advance(fresh(phase="failed"), "pending", 107.0)


def test_an_installed_target_is_committed_without_a_switch() -> None:
    j = machine.already_installed(fresh(), 110.0, sha256="b" * 64)
    assert (j.phase, j.progress, j.updated_at, j.sha256) == ("committed", 1.0, 110.0, "b" * 64)
    with pytest.raises(UpdateError, match=r"^an update in downloading cannot be skipped$"):
        machine.already_installed(fresh(phase="downloading"), 110.0)


def test_failure_reason_names_the_phase_once_and_is_capped() -> None:
    j = machine.fail(fresh(phase="switching"), "disk full", 9.0)
    assert (j.phase, j.error, j.updated_at) == ("rolled_back", "switching: disk full", 9.0)
    already = machine.fail(fresh(phase="verifying"), "verifying: bad hash", 9.0)
    assert (already.phase, already.error) == ("failed", "verifying: bad hash")
    long = machine.fail(fresh(phase="staging"), "x" * 3000, 9.0)
    assert long.error == ("staging: " + "x" * 3000)[:2000]
    assert [machine.failure_phase(fresh(phase=p)) for p in machine.ORDER[:-1]] == [
        "failed",
        "failed",
        "failed",
        "failed",
        "failed",
        "rolled_back",
        "rolled_back",
    ]


def test_recovery_keeps_its_promises_in_full() -> None:
    switching = machine.recover(fresh(phase="switching", clean_stop=True), 200.0)
    assert switching.action == "switch"
    assert (switching.journal.restarts, switching.journal.clean_stop) == (0, False)
    assert switching.journal.updated_at == 200.0
    revert = machine.recover(fresh(phase="probation", restarts=2), 300.0)
    assert revert.action == "revert" and revert.journal.restarts == 3
    assert revert.journal.updated_at == 300.0 and revert.journal.phase == "probation"
    assert revert.journal.error == (
        "the agent restarted 3 times while digits 1.1.0 was on probation; "
        "going back to the previous version"
    )
    probation = machine.recover(fresh(phase="probation", restarts=1), 300.0)
    assert probation.action == "probation" and probation.journal.updated_at == 300.0
    assert (probation.journal.restarts, probation.journal.probation_until) == (2, 360.0)
    resumed = machine.recover(fresh(phase="staging", attempts=4, error="x"), 400.0)
    assert resumed.action == "resume" and resumed.journal.attempts == 5
    assert (resumed.journal.error, resumed.journal.updated_at) == (None, 400.0)
    given_up = machine.recover(fresh(phase="staging", attempts=2), 400.0, max_attempts=2)
    assert given_up.action == "none" and given_up.journal.updated_at == 400.0
    assert given_up.journal.error == (
        "staging: gave up after 2 interrupted attempts (last in staging); "
        "the current version keeps running"
    )
    for phase in ("failed", "rolled_back"):
        done = fresh(phase=phase)
        assert machine.recover(done, 1.0) == machine.Recovery(done, "none")


FIRMWARE = TargetRef(
    kind="firmware", name="edgeos", version="2.0.0", target="firmware/edgeos/2.0.0/e.img"
)


def test_signed_fields_that_do_not_fit_the_request_or_the_device_are_refused() -> None:
    fits = {"kind": "model", "name": "digits", "version": "1.1.0", "runtime": "onnx"}
    machine.check_target(REF, fits, hardware="rpi4", runtimes=["onnx"])
    machine.check_target(REF, {"kind": "model"}, hardware="rpi4", runtimes=[])
    machine.check_target(
        FIRMWARE, {"kind": "firmware", "hardware": ["x", "rpi4"]}, hardware="rpi4", runtimes=[]
    )
    with pytest.raises(TrustError) as kind:
        machine.check_target(REF, {**fits, "kind": "firmware"}, hardware="rpi4", runtimes=["onnx"])
    assert str(kind.value) == (
        "models/digits/1.1.0/d.efpkg is signed as kind 'firmware', but the desired state "
        "asks for a model"
    )
    for key, other in (("name", "cats"), ("version", "9.9.9")):
        with pytest.raises(TrustError) as named:
            machine.check_target(REF, {**fits, key: other}, hardware="rpi4", runtimes=["onnx"])
        mine = getattr(REF, key)
        assert str(named.value) == f"{REF.target} is signed as {key} {other!r}, not {mine!r}"
    with pytest.raises(InstallError) as runtime:
        machine.check_target(REF, {**fits, "runtime": "tflite"}, hardware="rpi4", runtimes=["onnx"])
    assert str(runtime.value).startswith(
        f"{REF.target} needs the 'tflite' runtime, which this device does not have "
        "(it has onnx); not downloading it. To serve it: pip install"
    )
    with pytest.raises(InstallError, match=r"\(it has none\)"):
        machine.check_target(REF, fits, hardware="rpi4", runtimes=[])
    for hardware in (["x"], "rpi4", None):
        with pytest.raises(TrustError) as board:
            machine.check_target(
                FIRMWARE, {"kind": "firmware", "hardware": hardware}, hardware="rpi4", runtimes=[]
            )
        assert str(board.value) == (
            f"{FIRMWARE.target} is signed for hardware {hardware!r}; this device is 'rpi4'"
        )


def test_health_judgement_in_full() -> None:
    start = HealthCounters(100, 1, crashes=2)
    ok = dict(max_error_rate=0.05, min_inferences=20)
    assert judge_health(start, HealthCounters(100, 1, crashes=2), **ok) is None
    assert judge_health(start, HealthCounters(100, 1, crashes=4), **ok) == (
        "the model runtime crashed 2 time(s) during probation"
    )
    assert judge_health(start, HealthCounters(120, 3, crashes=2), **ok) == (
        "inference error rate 10.0% (2 of 20) during probation is above the 5.0% limit"
    )
    assert judge_health(start, HealthCounters(119, 20, crashes=2), **ok) is None  # 19 < 20
    assert judge_health(start, HealthCounters(120, 2, crashes=2), **ok) is None  # exactly 5%
    none_needed = dict(max_error_rate=0.0, min_inferences=0)
    assert judge_health(start, HealthCounters(100, 1, crashes=2), **none_needed) is None
    assert judge_health(start, HealthCounters(101, 2, crashes=2), **none_needed) == (
        "inference error rate 100.0% (1 of 1) during probation is above the 0.0% limit"
    )


def test_the_policy_given_at_the_start_is_the_one_kept() -> None:
    j = machine.begin(REF, 4, None, 5.0, probation_s=30, max_restarts=7)
    assert (j.desired_version, j.rollout_id, j.probation_s, j.max_restarts) == (4, None, 30, 7)
    with pytest.raises(InstallError, match=r"\(it has onnx, tflite\)"):
        machine.check_target(
            REF, {"kind": "model", "runtime": "tvm"}, hardware="x", runtimes=["onnx", "tflite"]
        )
