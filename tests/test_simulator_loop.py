"""The simulator closes the loop: its devices train a model together and install it.

``fleetctl simulate`` plays six devices in two worker processes (each device the
real agent daemon) booting the untrained start package; its sensors feed labelled
readings back, so the devices gather training samples.  A federated run over
``tag:simulated=loop`` trains on them, the server signs the candidate and rolls it
out to the participants, and each device installs it from ``/tuf/`` into its other
slot and commits it after probation.  Ctrl-C then takes the whole fleet offline
with a clean summary.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from fleet_server.server import FleetServer

from .fl_helpers import (
    MODEL,
    Rest,
    committed,
    release_spec,
    reported_samples,
    write_start_package,
)
from .harness import admin_token, wait_for
from .sim_helpers import logs, online, simulate, summary

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
DEVICES = 6
PER_PROCESS = 3
"""Two worker processes: the run and the rollout span both."""
PREFIX = "loop"
BOOT_VERSION = "1.0.0"
"""write_start_package's version: what every simulated device serves at first."""


def test_simulated_devices_train_a_model_and_roll_it_out_to_themselves(
    fleet: FleetServer, tmp_path: Path
) -> None:
    models = fleet.settings.data_dir / "models"
    write_start_package(models)
    (start,) = models.glob(f"{MODEL}-{BOOT_VERSION}-*.efpkg")
    token = admin_token(fleet.settings.api_url)
    rest = Rest(fleet.settings.api_url, token)
    ids = [f"{PREFIX}-{i:05d}" for i in range(DEVICES)]
    proc = simulate(
        fleet,
        tmp_path,
        token,
        *("--prefix", PREFIX, "--per-process", str(PER_PROCESS), "--model", str(start)),
        *("--feedback", "1", "--probation", "1"),
        devices=DEVICES,
        env={"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"},
    )
    try:
        wait_for(
            lambda: proc.poll() is None and all(online(fleet, d) for d in ids),
            timeout=180,
            what="all simulated devices online",
        )
        wait_for(
            lambda: all(reported_samples(fleet, d) for d in ids),
            timeout=120,
            what="labelled samples in every device's learning telemetry",
        )
        booted = {d: fleet.store.get_device(d).reported for d in ids}
        assert all(
            r is not None and r.model is not None and r.model.version == BOOT_VERSION
            for r in booted.values()
        ), booted

        spec = release_spec(f"tag:simulated={PREFIX}", DEVICES, epochs=3)
        r = rest.post("/training/runs", spec.model_dump(mode="json"))
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]
        run = rest.finished_run(run_id, timeout=300)
        assert run["status"] == "completed", run
        result = run["result"]
        assert result["participants"] == ids, result
        assert [rec["round"] for rec in run["rounds"]] == [1, 2, 3], run["rounds"]
        for record in run["rounds"]:
            assert sorted(record["participants"]) == ids, record
            assert record["failures"] == {}, record
        assert result["handed_over"] is True and result["accuracy"] > result["baseline_accuracy"]
        version = result["version"]
        assert version != BOOT_VERSION

        rollouts = rest.get("/rollouts")["items"]
        assert len(rollouts) == 1, rollouts
        rollout = rollouts[0]
        assert rollout["artifact"].startswith(f"{MODEL}@{version}")
        assert rollout["created_by"] == f"federation:{run_id}"
        assert rollout["devices"] == DEVICES, rollout
        assert all(f"id:{d}" in rollout["target"] for d in ids), rollout["target"]
        done = rest.finished_rollout(rollout["id"], timeout=300)
        assert done["status"] == "completed", (done["reason"], done["devices_detail"])
        wait_for(
            lambda: all(committed(fleet, d, MODEL, version) for d in ids),
            timeout=120,
            what=f"every simulated device committed {MODEL}@{version}",
        )

        def serves_new_model(device_id: str) -> bool:
            # the sensors keep reading through the swapped slot, with ground truth
            t = fleet.store.latest_telemetry(device_id)  # type: ignore[attr-defined]
            i = t.inference if t else None
            return bool(i and i.version == version and i.count > 0 and i.feedback_count > 0)

        wait_for(
            lambda: all(serves_new_model(d) for d in ids),
            timeout=60,
            what=f"readings answered by {MODEL}@{version} on every device",
        )
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: every device disconnects cleanly
    doc = summary(proc, tmp_path)
    assert doc["devices"] == DEVICES and doc["processes"] == DEVICES // PER_PROCESS, doc
    assert doc["enrolled_now"] == DEVICES, doc
    assert doc["errors"] == 0, (doc, logs(tmp_path))
    assert isinstance(doc["desired_applied"], int) and doc["desired_applied"] >= DEVICES, doc
    assert isinstance(doc["readings"], int) and doc["readings"] > 0, doc
    wait_for(lambda: not any(online(fleet, d) for d in ids), timeout=60, what="all offline")
    # every batch the server stored was counted by the simulator (a few may still sit in
    # a spool), and every device delivered more than the one that showed its samples
    stored = {d: len(fleet.store.query_raw(d, since=0, until=1e11)) for d in ids}
    assert all(n > 1 for n in stored.values()), stored
    assert isinstance(doc["telemetry_batches"], int), doc
    assert doc["telemetry_batches"] >= sum(stored.values()), (doc, stored)
