"""``fleetctl simulate`` against a real server: enrollment, mTLS, telemetry, twins, reuse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from edgefleet_contract.errors import NotFound
from fleet_server.server import FleetServer

from .harness import wait_for
from .test_enrollment_e2e import admin_token

BIN = Path(sys.executable).parent
DEVICES = 20
PER_PROCESS = 7
"""Three worker processes (7 + 7 + 6 devices): the parent adds up what each reports."""


def _simulate(fleet: FleetServer, tmp_path: Path, token: str, *extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "FLEETCTL_SERVER": fleet.settings.api_url,
        "FLEETCTL_TOKEN": token,
        "FLEETCTL_CONFIG": str(tmp_path / "ctl.json"),
    }
    cmd = [str(BIN / "fleetctl"), "--json", "simulate", "--devices", str(DEVICES)]
    cmd += ["--per-process", str(PER_PROCESS)]  # a later --devices/--per-process wins
    cmd += ["--data-dir", str(tmp_path / "sim"), "--telemetry-interval", "0.5", "--rate", "4"]
    return subprocess.Popen(
        [*cmd, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _online(fleet: FleetServer, device_id: str) -> bool:
    try:
        return fleet.store.get_device(device_id).online
    except NotFound:  # not enrolled yet
        return False


def _summary(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    doc = json.loads(out.strip().splitlines()[-1])
    assert isinstance(doc, dict)
    return doc


def test_simulated_fleet_enrolls_reports_follows_twins_and_reuses_identities(
    fleet: FleetServer, tmp_path: Path
) -> None:
    token = admin_token(fleet)
    store, api = fleet.store, fleet.settings.api_url
    ids = [f"sim-{i:05d}" for i in range(DEVICES)]
    proc = _simulate(fleet, tmp_path, token)
    try:
        wait_for(
            lambda: proc.poll() is None and all(_online(fleet, d) for d in ids),
            timeout=240,
            what="all online",
        )

        def inference_everywhere() -> bool:
            for d in ids:
                batches = store.query_raw(d, since=0, until=1e11)
                if not any(b.inference is not None and b.inference.count > 0 for b in batches):
                    return False
            return True

        wait_for(inference_everywhere, timeout=180, what="inference telemetry from every device")

        headers = {"Authorization": f"Bearer {token}"}
        for d in ids:
            r = httpx.put(
                f"{api}/api/v1/devices/{d}/twin/desired",
                headers=headers,
                json={"config": {"telemetry_interval_s": 1}},
            )
            assert r.status_code == 200, r.text
        wait_for(
            lambda: all((cmds := store.list_commands(d)) and cmds[0].status == "done" for d in ids),
            timeout=180,
            what="set_desired acknowledged by every device",
        )
        twin = httpx.get(f"{api}/api/v1/devices/{ids[-1]}/twin", headers=headers).json()
        assert twin["status"] == "in_sync"
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: every device disconnects cleanly
    first = _summary(proc)
    assert first["enrolled_now"] == DEVICES and first["processes"] == 3
    assert isinstance(first["telemetry_batches"], int) and first["telemetry_batches"] >= DEVICES
    assert first["desired_applied"] == DEVICES
    wait_for(lambda: not any(_online(fleet, d) for d in ids), what="all offline")

    # a second run reuses the identities: no new enrollment, same devices online again
    second = _summary(_simulate(fleet, tmp_path, token, "--duration", "1", "--no-model"))
    assert second["enrolled_now"] == 0 and second["reused"] == DEVICES
    assert second["time_to_all_online_s"] is not None
    assert second["errors"] == 0


def test_devices_of_one_process_share_one_loaded_model_per_package(tmp_path: Path) -> None:
    import shutil

    from fleet_server.fleetctl.cmd_simulate import _default_model
    from fleet_server.simulate.models import SHARED_MODELS, SharedModelService

    package = _default_model()
    assert package is not None
    copies = []
    for i in range(3):  # each device keeps its own copy of the package in its slots
        copy = tmp_path / f"slot-{i}" / package.name
        copy.parent.mkdir()
        shutil.copy(package, copy)
        copies.append(copy)
    before = SHARED_MODELS.loads
    services = [SharedModelService() for _ in copies]
    models = [s.replace(c) for s, c in zip(services, copies, strict=True)]
    assert models[0] is models[1] is models[2]
    assert SHARED_MODELS.loads - before <= 1
    # each device still measures its own inferences in its own recorder
    services[0].predict(models[0].manifest.self_test.inputs[:2])
    first, second = services[0].snapshot(), services[1].snapshot()
    assert first is not None and second is not None
    assert first.inference.count == 2 and second.inference.count == 0


def _workers(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process(proc.pid).children()
        if "fleet_server.simulate.worker" in " ".join(p.cmdline())
    ]


def _gone(workers: list[psutil.Process]) -> bool:
    return not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_a_worker_that_dies_stops_the_run_with_its_log_and_the_rest_disconnect(
    fleet: FleetServer, tmp_path: Path
) -> None:
    token = admin_token(fleet)
    ids = [f"sim-{i:05d}" for i in range(4)]
    proc = _simulate(fleet, tmp_path, token, "--devices", "4", "--per-process", "2", "--no-model")
    try:
        wait_for(lambda: all(_online(fleet, d) for d in ids), timeout=180, what="all online")
        workers = _workers(proc)
        assert len(workers) == 2
        workers[1].kill()  # the second slice: sim-00002, sim-00003
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-2000:]
    assert "simulator worker 1 (sim-00002, 2 devices) exited with code -9" in err
    assert "worker-01.log" in err
    wait_for(lambda: _gone(workers), timeout=60, what="the other worker stopped")
    # the killed worker's devices go offline through their Last Will, the others cleanly
    wait_for(lambda: not any(_online(fleet, d) for d in ids), timeout=60, what="all offline")


def test_killing_fleetctl_stops_its_workers_and_their_devices(
    fleet: FleetServer, tmp_path: Path
) -> None:
    token = admin_token(fleet)
    ids = [f"sim-{i:05d}" for i in range(4)]
    proc = _simulate(fleet, tmp_path, token, "--devices", "4", "--per-process", "2", "--no-model")
    try:
        wait_for(lambda: all(_online(fleet, d) for d in ids), timeout=180, what="all online")
        workers = _workers(proc)
        assert len(workers) == 2
        proc.kill()  # no Ctrl-C handler runs: the workers only see their stdin close
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: _gone(workers), timeout=120, what="workers stopped by themselves")
    wait_for(lambda: not any(_online(fleet, d) for d in ids), timeout=60, what="all offline")
    logs = sorted((tmp_path / "sim").rglob("worker-*.log"))
    assert len(logs) == 2


def test_status_lines_add_up_and_a_bad_line_says_what_is_wrong() -> None:
    from edgefleet_contract.errors import ContractError
    from fleet_server.simulate.protocol import Job, Status, decode, encode

    a, b = Status(started=2, telemetry=5, final=True), Status(started=3, errors=1, final=False)
    total = a + b
    assert (total.started, total.telemetry, total.errors, total.final) == (5, 5, 1, False)
    job = Job(root="/x", prefix="p", first=100, count=3, probation_s=5)
    assert decode(Job, encode(job)) == job and job.device_ids == ["p-00100", "p-00101", "p-00102"]
    for line, message in (("[1]", "not a JSON object"), ("{", "Expecting"), ('{"x": 1}', "x")):
        with pytest.raises(ContractError, match=message):
            decode(Status, line)
