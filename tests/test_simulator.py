"""``fleetctl simulate`` against a real server: enrollment, mTLS, telemetry, twins, reuse."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from fleet_server.server import FleetServer

from .harness import wait_for
from .sim_helpers import online, simulate, summary
from .test_enrollment_e2e import admin_token

DEVICES = 20
PER_PROCESS = 7
"""Three worker processes (7 + 7 + 6 devices): the parent adds up what each reports."""
WORKERS = ("--per-process", str(PER_PROCESS))


def test_simulated_fleet_enrolls_reports_follows_twins_and_reuses_identities(
    fleet: FleetServer, tmp_path: Path
) -> None:
    token = admin_token(fleet)
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
