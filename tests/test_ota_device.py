"""Device-side OTA against a real signed TUF repository over loopback HTTP."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import bsdiff4
import numpy as np
import pytest

from agent.updates import active_model_path
from agent.updates.journal import Journal
from agent.updates.slots import ModelSlots
from agent.updates.updater import UpdatePolicy

from .ota_device_kit import (
    Device,
    make_device,
    model_custom,
    model_ref,
    model_target,
    package_bytes,
    publish_model,
)
from .tuf_sim import RepoServer, sha256


@pytest.fixture
def device(tmp_path: Path, repo_server: RepoServer) -> Device:
    return make_device(tmp_path / "dev", repo_server)


def test_update_commits_and_switches_slots(device: Device, repo_server: RepoServer) -> None:
    v2 = publish_model(repo_server.repo, "1.1.0")
    old_slot = ModelSlots(device.data_dir).pointer()
    final = device.updater.run(model_ref("1.1.0"), desired_version=7, rollout_id="r1")
    assert final.phase == "committed", final.error
    assert device.serving == "1.1.0"
    pointer = ModelSlots(device.data_dir).pointer()
    assert pointer is not None and old_slot is not None
    assert pointer.active != old_slot.active and pointer.previous == old_slot.active
    assert pointer.committed
    assert active_model_path(device.data_dir) is not None
    active = ModelSlots(device.data_dir).active(verify=True)
    assert active is not None and active.sha256 == sha256(v2)
    for phase in ("downloading", "verifying", "staging", "self_test", "switching", "probation"):
        assert phase in device.reports
    report = device.updater.report()
    assert report is not None and report.phase == "committed" and report.desired_version == 7
    # The same target again is a no-op, not a second download.
    before = len(repo_server.requests)
    assert device.updater.run(model_ref("1.1.0"), desired_version=8).phase == "committed"
    assert len(repo_server.requests) == before


def test_failed_self_test_keeps_the_current_model(device: Device, repo_server: RepoServer) -> None:
    publish_model(repo_server.repo, "1.1.0", package_bytes("1.1.0", broken_self_test=True))
    pointer = ModelSlots(device.data_dir).pointer()
    final = device.updater.run(model_ref("1.1.0"), desired_version=2)
    assert final.phase == "failed"
    assert final.error is not None and "self-test" in final.error
    assert device.serving == "1.0.0"
    assert ModelSlots(device.data_dir).pointer() == pointer


def test_unhealthy_probation_switches_back(device: Device, repo_server: RepoServer) -> None:
    publish_model(repo_server.repo, "1.1.0")
    device.updater.policy = UpdatePolicy(probation_s=120, poll_s=0.02, min_inferences=5)

    def traffic() -> None:  # the new model starts failing half its requests
        for _ in range(200):
            time.sleep(0.05)
            device.health.add(4, errors=2)

    def on_change(journal: Journal) -> None:
        device.reports.append(journal.phase)
        if journal.phase == "probation" and device.reports.count("probation") == 1:
            threading.Thread(target=traffic, daemon=True).start()

    device.updater.on_change = on_change
    pointer = ModelSlots(device.data_dir).pointer()
    final = device.updater.run(model_ref("1.1.0"), desired_version=2)
    assert final.phase == "rolled_back"
    assert final.error is not None and "error rate" in final.error
    assert device.serving == "1.0.0"
    after = ModelSlots(device.data_dir).pointer()
    assert after is not None and pointer is not None and after.active == pointer.active


def test_delta_is_used_and_counted(device: Device, repo_server: RepoServer) -> None:
    v1 = package_bytes("1.0.0")
    v2 = publish_model(repo_server.repo, "1.1.0")
    patch = bsdiff4.diff(v1, v2)
    repo_server.repo.deltas[(sha256(v1), sha256(v2))] = patch
    final = device.updater.run(model_ref("1.1.0"), desired_version=2)
    assert final.phase == "committed", final.error
    assert final.delta == "used"
    assert final.bytes_transferred == len(patch) < len(v2)
    report = device.updater.report()
    assert report is not None and report.delta_used
    assert report.bytes_transferred == len(patch)
    assert not any(path.startswith("/tuf/targets/") for path, _ in repo_server.requests)


def test_bad_delta_falls_back_to_the_full_artifact(device: Device, repo_server: RepoServer) -> None:
    v1 = package_bytes("1.0.0")
    v2 = publish_model(repo_server.repo, "1.1.0")
    wrong = package_bytes("1.2.0")  # a valid patch, to the wrong file
    repo_server.repo.deltas[(sha256(v1), sha256(v2))] = bsdiff4.diff(v1, wrong)
    final = device.updater.run(model_ref("1.1.0"), desired_version=2)
    assert final.phase == "committed", final.error
    assert final.delta == "rejected"
    assert final.bytes_transferred >= len(v2)
    assert device.serving == "1.1.0"


def test_download_cut_at_90_percent_resumes_with_range(
    device: Device, repo_server: RepoServer
) -> None:
    v2 = publish_model(repo_server.repo, "1.1.0")
    repo_server.faults.cut_at = 0.9
    device.updater.policy = UpdatePolicy(probation_s=0.1, poll_s=0.02, retry_s=0.05)
    final = device.updater.run(model_ref("1.1.0"), desired_version=2)
    assert final.phase == "committed", final.error
    target_requests = [(p, r) for p, r in repo_server.requests if p.startswith("/tuf/targets/")]
    assert len(target_requests) == 2
    assert target_requests[0][1] is None
    resumed_from = int(len(v2) * 0.9)
    assert target_requests[1][1] == f"bytes={resumed_from}-"
    assert final.bytes_transferred == len(v2)  # nothing fetched twice


def test_server_ignoring_range_restarts_cleanly(device: Device, repo_server: RepoServer) -> None:
    publish_model(repo_server.repo, "1.1.0")
    repo_server.faults.cut_at = 0.5
    repo_server.faults.ignore_range = True
    device.updater.policy = UpdatePolicy(probation_s=0.1, poll_s=0.02, retry_s=0.05)
    final = device.updater.run(model_ref("1.1.0"), desired_version=2)
    assert final.phase == "committed", final.error
    assert device.serving == "1.1.0"


def test_target_of_the_wrong_kind_is_refused(device: Device, repo_server: RepoServer) -> None:
    data = package_bytes("1.1.0")
    repo_server.repo.add_target(
        model_target("1.1.0"), data, {**model_custom("1.1.0"), "kind": "firmware"}
    )
    repo_server.repo.publish()
    final = device.updater.run(model_ref("1.1.0"), desired_version=2)
    assert final.phase == "failed"
    assert final.error is not None and "kind" in final.error
    assert device.serving == "1.0.0"


def test_unknown_target_is_refused(device: Device, repo_server: RepoServer) -> None:
    publish_model(repo_server.repo, "1.1.0")
    final = device.updater.run(model_ref("9.9.9"), desired_version=2)
    assert final.phase == "failed"
    assert final.error is not None and "not a signed target" in final.error


def test_going_back_to_the_previous_version_needs_no_download(
    device: Device, repo_server: RepoServer
) -> None:
    publish_model(repo_server.repo, "1.1.0")
    assert device.updater.run(model_ref("1.1.0"), desired_version=2).phase == "committed"
    publish_model(repo_server.repo, "1.0.0")  # the server rolls the device back
    before = len(repo_server.requests)
    final = device.updater.run(model_ref("1.0.0"), desired_version=3)
    assert final.phase == "committed", final.error
    assert device.serving == "1.0.0"
    assert final.bytes_transferred == 0
    assert not any(
        p.startswith(("/tuf/targets/", "/tuf/deltas/")) for p, _ in repo_server.requests[before:]
    )


def test_stopping_the_daemon_mid_probation_keeps_the_update_for_the_next_start(
    device: Device, repo_server: RepoServer
) -> None:
    publish_model(repo_server.repo, "1.1.0")
    device.updater.policy = UpdatePolicy(probation_s=600, poll_s=0.02)
    done: list[Journal] = []
    worker = threading.Thread(
        target=lambda: done.append(device.updater.run(model_ref("1.1.0"), desired_version=2))
    )
    worker.start()
    deadline = time.monotonic() + 60
    while "probation" not in device.reports and time.monotonic() < deadline:
        time.sleep(0.02)
    device.updater.stop_event.set()
    worker.join(30)
    assert done and done[0].phase == "probation" and done[0].clean_stop
    assert device.serving == "1.1.0"


def test_desired_model_already_running_is_not_reinstalled(
    device: Device, repo_server: RepoServer
) -> None:
    publish_model(repo_server.repo, "1.0.0")  # what the device already serves
    before = ModelSlots(device.data_dir).pointer()
    final = device.updater.run(model_ref("1.0.0"), desired_version=2)
    assert final.phase == "committed" and final.bytes_transferred == 0
    assert "staging" not in device.reports
    assert ModelSlots(device.data_dir).pointer() == before


def test_predictions_never_stop_during_an_update(device: Device, repo_server: RepoServer) -> None:
    publish_model(repo_server.repo, "1.1.0")
    rows = np.zeros((1, 64), dtype=np.float32)
    seen: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def predict() -> None:
        while not stop.is_set():
            try:
                device.service.predict(rows)
                model = device.service.model
                seen.append(model.manifest.version if model else "none")
            except BaseException as exc:  # any gap in service is a failure
                failures.append(exc)

    worker = threading.Thread(target=predict)
    worker.start()
    deadline = time.monotonic() + 30
    while not seen and not failures and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        final = device.updater.run(model_ref("1.1.0"), desired_version=2)
    finally:
        stop.set()
        worker.join(10)
    assert final.phase == "committed"
    assert not failures
    assert seen[0] == "1.0.0" and seen[-1] == "1.1.0" and "none" not in seen


def test_model_for_a_runtime_the_device_lacks_is_not_downloaded(
    device: Device, repo_server: RepoServer
) -> None:
    custom = {**model_custom("1.1.0"), "runtime": "tensorrt"}
    repo_server.repo.add_target(model_target("1.1.0"), package_bytes("1.1.0"), custom)
    repo_server.repo.publish()
    final = device.updater.run(model_ref("1.1.0"), desired_version=2)
    assert final.phase == "failed"
    assert final.error is not None and "tensorrt" in final.error
    assert not any(p.startswith("/tuf/targets/") for p, _ in repo_server.requests)


FAST_RETRY = UpdatePolicy(probation_s=0.1, poll_s=0.02, backoff_s=0.01, backoff_max_s=0.05)


def _errors_seen(device: Device) -> list[str]:
    seen: list[str] = []
    device.updater.on_change = lambda journal: seen.append(journal.error or "")
    return seen


def test_a_server_that_cannot_answer_is_retried_until_it_does(
    device: Device, repo_server: RepoServer
) -> None:
    publish_model(repo_server.repo, "1.1.0")
    device.updater.policy = FAST_RETRY
    seen = _errors_seen(device)
    repo_server.faults.unavailable = 4  # the metadata refresh, then the download, meet 503s
    final = device.updater.run(model_ref("1.1.0"), desired_version=2)
    assert final.phase == "committed", final.error
    assert device.serving == "1.1.0"
    waits = [e for e in seen if e.startswith("retrying in")]
    assert len(waits) >= 1 and "503" in waits[0]
    assert final.error is None  # the wait note does not outlive the retry


def test_retries_end_after_retry_for_s_with_the_last_reason(
    device: Device, repo_server: RepoServer
) -> None:
    publish_model(repo_server.repo, "1.1.0")
    device.updater.policy = UpdatePolicy(
        probation_s=0.1, backoff_s=0.01, backoff_max_s=0.02, retry_for_s=0.3
    )
    repo_server.faults.unavailable = 10**6
    final = device.updater.run(model_ref("1.1.0"), desired_version=2)
    assert final.phase == "failed"
    assert final.error is not None and "still failing after" in final.error
    assert "503" in final.error
    assert device.serving == "1.0.0"
    assert len(repo_server.requests) > 3  # it did retry


def test_an_artifact_the_server_does_not_have_is_not_retried(
    device: Device, repo_server: RepoServer
) -> None:
    publish_model(repo_server.repo, "1.1.0")
    repo_server.repo.artifacts.clear()  # signed, but the file is gone: a 404 will not heal
    device.updater.policy = FAST_RETRY
    final = device.updater.run(model_ref("1.1.0"), desired_version=2)
    assert final.phase == "failed"
    assert final.error is not None and "HTTP 404" in final.error
    assert "retrying" not in final.error
    assert sum(p.startswith("/tuf/targets/") for p, _ in repo_server.requests) == 1


def test_a_newer_desired_state_ends_a_retry_wait(device: Device, repo_server: RepoServer) -> None:
    publish_model(repo_server.repo, "1.1.0")
    device.updater.policy = UpdatePolicy(probation_s=0.1, backoff_s=30, backoff_max_s=30)
    repo_server.faults.unavailable = 10**6
    newer = threading.Event()
    device.updater.superseded = newer.is_set
    threading.Timer(0.3, newer.set).start()
    started = time.monotonic()
    final = device.updater.run(model_ref("1.1.0"), desired_version=2)
    assert final.phase == "failed"
    assert final.error is not None and "superseded" in final.error
    assert time.monotonic() - started < 20  # not the 15-30 s backoff
