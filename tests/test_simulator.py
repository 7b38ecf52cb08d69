"""``fleetctl simulate`` against a real server: enrollment, mTLS, telemetry, twins, reuse."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fleet_server.server import FleetServer

from .harness import admin_token, get_twin, put_desired, wait_for
from .sim_helpers import logs, online, simulate, summary

DEVICES = 20
PER_PROCESS = 7
"""Three worker processes (7 + 7 + 6 devices): the parent adds up what each reports."""
WORKERS = ("--per-process", str(PER_PROCESS))


def test_simulated_fleet_enrolls_reports_follows_twins_and_reuses_identities(
    fleet: FleetServer, tmp_path: Path
) -> None:
    token = admin_token(fleet.settings.api_url)
    store, api = fleet.store, fleet.settings.api_url
    ids = [f"sim-{i:05d}" for i in range(DEVICES)]
    proc = simulate(fleet, tmp_path, token, *WORKERS, devices=DEVICES)
    try:
        wait_for(
            lambda: proc.poll() is None and all(online(fleet, d) for d in ids),
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
            r = put_desired(api, headers, d, {"config": {"telemetry_interval_s": 1}})
            assert r.status_code == 200, r.text
        wait_for(
            lambda: all((cmds := store.list_commands(d)) and cmds[0].status == "done" for d in ids),
            timeout=180,
            what="set_desired acknowledged by every device",
        )
        twin = get_twin(api, headers, ids[-1]).json()
        assert twin["status"] == "in_sync"
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: every device disconnects cleanly
    first = summary(proc, tmp_path)
    assert first["enrolled_now"] == DEVICES and first["processes"] == 3
    assert isinstance(first["telemetry_batches"], int) and first["telemetry_batches"] >= DEVICES
    assert first["desired_applied"] == DEVICES
    wait_for(lambda: not any(online(fleet, d) for d in ids), what="all offline")

    # a second run reuses the identities: no new enrollment, same devices online again
    again = simulate(
        fleet, tmp_path, token, *WORKERS, "--duration", "1", "--no-model", devices=DEVICES
    )
    second = summary(again, tmp_path)
    assert second["enrolled_now"] == 0 and second["reused"] == DEVICES
    assert second["time_to_all_online_s"] is not None
    assert second["errors"] == 0


def test_devices_of_one_process_share_one_loaded_model_per_package(tmp_path: Path) -> None:
    import shutil

    from edgefleet_sim.command import _default_model
    from edgefleet_sim.models import SHARED_MODELS, SharedModelService

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
        if "edgefleet_sim.worker" in " ".join(p.cmdline())
    ]


def _gone(workers: list[psutil.Process]) -> bool:
    return not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


SMALL = ("--per-process", "2", "--no-model")
"""Four devices in two workers of two."""
SMALL_IDS = [f"sim-{i:05d}" for i in range(4)]


@contextlib.contextmanager
def _small_fleet(
    fleet: FleetServer, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], list[psutil.Process]]]:
    """The four devices online, with the simulator and its two workers; killed if the
    test leaves it running."""
    proc = simulate(fleet, tmp_path, admin_token(fleet.settings.api_url), *SMALL, devices=4)
    try:
        wait_for(lambda: all(online(fleet, d) for d in SMALL_IDS), timeout=180, what="all online")
        workers = _workers(proc)
        assert len(workers) == 2
        yield proc, workers
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_worker_that_dies_stops_the_run_with_its_log_and_the_rest_disconnect(
    fleet: FleetServer, tmp_path: Path
) -> None:
    with _small_fleet(fleet, tmp_path) as (proc, workers):
        workers[1].kill()  # the second slice: sim-00002, sim-00003
        proc.communicate(timeout=180)
    err = (tmp_path / "simulate.log").read_text()
    assert proc.returncode == 1, logs(tmp_path)
    assert "simulator worker 1 (sim-00002, 2 devices) exited with code -9" in err
    assert "worker-01.log" in err
    wait_for(lambda: _gone(workers), timeout=60, what="the other worker stopped")
    # the killed worker's devices go offline through their Last Will, the others cleanly
    wait_for(lambda: not any(online(fleet, d) for d in SMALL_IDS), timeout=60, what="all offline")


def test_killing_fleetctl_stops_its_workers_and_their_devices(
    fleet: FleetServer, tmp_path: Path
) -> None:
    with _small_fleet(fleet, tmp_path) as (proc, workers):
        proc.kill()  # no Ctrl-C handler runs: the workers only see their stdin close
        proc.communicate(timeout=30)
    wait_for(lambda: _gone(workers), timeout=120, what="workers stopped by themselves")
    wait_for(lambda: not any(online(fleet, d) for d in SMALL_IDS), timeout=60, what="all offline")
    assert len(sorted((tmp_path / "sim").rglob("worker-*.log"))) == 2


def test_status_lines_add_up_and_a_bad_line_says_what_is_wrong() -> None:
    from edgefleet_contract.errors import ContractError
    from edgefleet_sim.protocol import Job, Status, decode, encode

    a, b = Status(started=2, telemetry=5, final=True), Status(started=3, errors=1, final=False)
    total = a + b
    assert (total.started, total.telemetry, total.errors, total.final) == (5, 5, 1, False)
    job = Job(root="/x", prefix="p", first=100, count=3, probation_s=5)
    assert decode(Job, encode(job)) == job and job.device_ids == ["p-00100", "p-00101", "p-00102"]
    for line, message in (("[1]", "not a JSON object"), ("{", "Expecting"), ('{"x": 1}', "x")):
        with pytest.raises(ContractError, match=message):
            decode(Status, line)
