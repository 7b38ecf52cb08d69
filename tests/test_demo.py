"""The README's run command in its short mode, end to end, twice.

The demo writes its summary to ``summary.json``; every figure there is checked
against what the server itself stored (its SQLite file, opened after the demo
exited) and what the devices left behind, so a summary that claimed more than
happened would fail here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fleet_server.config import ServerSettings
from fleet_server.rollouts.persist import load
from fleet_server.store import open_store

from .agentproc import spooled_telemetry
from .harness import free_port, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
BIN = Path(sys.executable).parent
DEVICES = 3


def run_demo(data_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        [
            *(str(BIN / "fleet-server"), "demo", "--quick", "--exit-when-done"),
            *("--devices", str(DEVICES), "--data-dir", str(data_dir)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "stopped: agents, server and broker" in result.stdout
    assert "login: admin / edgefleet-demo" in result.stdout
    summary: dict[str, Any] = json.loads((data_dir / "summary.json").read_text())
    return summary


def check_against_server(summary: dict[str, Any], data_dir: Path) -> None:
    ids = [f"demo-{i:03d}" for i in range(DEVICES)]
    assert sorted(summary["devices"]) == ids
    store: Any = open_store(ServerSettings(data_dir=data_dir / "server").database_url)
    try:
        # Accuracy rose, on the held-out split, as the run itself recorded it.
        run = store.get_training_run(summary["run_id"])
        assert run.status == "completed" and run.result["handed_over"] is True
        assert run.result["baseline_accuracy"] == summary["accuracy_before"]
        assert run.result["accuracy"] == summary["accuracy_after"]
        assert summary["accuracy_after"] > summary["accuracy_before"]
        rounds = store.list_rounds(run.id)
        assert [r.accuracy for r in rounds] == summary["round_accuracy"]
        assert sum(r.bytes_in + r.bytes_out for r in rounds) == summary["fl_bytes"] > 0
        assert all(sorted(r.participants) == ids for r in rounds)

        # Every device runs the new version: the rollout says so and so do the twins.
        rollout = load(store, summary["rollout_id"])
        assert rollout.status == "completed"
        assert sorted(rollout.devices) == ids
        assert all(d.status == "succeeded" for d in rollout.devices.values())
        assert rollout.plan.artifact.version == summary["version"]
        assert summary["devices_updated"] == DEVICES
        update_bytes = 0
        for device_id in ids:
            reported = store.get_device(device_id).reported
            assert reported is not None and reported.model is not None and reported.update
            assert (reported.model.name, reported.model.version) == (
                "digits-demo",
                summary["version"],
            )
            assert reported.update.phase == "committed"
            assert reported.update.bytes_transferred > 0
            update_bytes += reported.update.bytes_transferred
        assert update_bytes == summary["update_bytes"]

        # Drift alerts only on the devices whose inputs the demo changed, and the server's
        # own record says each of those alerted (from its baseline) while the others never did.
        assert summary["drift_alerts"] == summary["shifted_devices"] == ids[:1]
        for device_id in ids:
            raw = store.query_raw(device_id, since=summary["since"], until=1e11, limit=10**6)
            alerted = [b for b in raw if getattr(b.drift, "alert", False)]
            assert bool(alerted) == (device_id in summary["shifted_devices"]), device_id

        # Nothing lost: every batch each agent built this run is in the server's store,
        # or still in that agent's outbox; one boot, no gap, no duplicate.
        for device_id in ids:
            stored = store.query_raw(device_id, since=summary["since"], until=1e11, limit=10**6)
            pending = spooled_telemetry(data_dir / "agents" / device_id)
            batches = stored + pending
            assert len({b.batch_id.rsplit("-", 1)[0] for b in batches}) == 1
            assert sorted(b.seq for b in batches) == list(range(1, len(batches) + 1))
            assert len(stored) >= summary["devices"][device_id]["telemetry_batches"] > 0
            assert all(b.spool.dropped_total == 0 for b in stored), "an agent's spool dropped"
    finally:
        store.close()


def demo_env() -> dict[str, str]:
    # Fresh ports per run: a port found free long before a run may meanwhile be some
    # other process's ephemeral port on a busy machine (the data dir does not pin ports).
    return {
        **os.environ,
        "DEMO_API_PORT": str(free_port()),
        "DEMO_BROKER_PORT": str(free_port()),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }


def test_demo_runs_the_whole_loop_twice(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    first = run_demo(data_dir, demo_env())
    check_against_server(first, data_dir)
    second = run_demo(data_dir, demo_env())
    check_against_server(second, data_dir)
    # The second run found the devices and the first candidate already there, and went on.
    assert second["version"] != first["version"]
    assert second["run_id"] != first["run_id"]


def test_ctrl_c_mid_training_stops_agents_server_and_broker(tmp_path: Path) -> None:
    api_port, broker_port = free_port(), free_port()
    env = {
        **os.environ,
        "DEMO_API_PORT": str(api_port),
        "DEMO_BROKER_PORT": str(broker_port),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    data_dir = tmp_path / "demo"
    out = tmp_path / "out.txt"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [
                *(str(BIN / "fleet-server"), "demo", "--quick", "--rounds", "50"),
                *("--devices", "2", "--data-dir", str(data_dir)),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            wait_for(lambda: "federated training" in out.read_text(), 300, "training step")
            addresses = [
                (data_dir / "agents" / f"demo-{i:03d}" / "local-api.addr").read_text().strip()
                for i in range(2)
            ]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 130, out.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "stopped: agents, server and broker" in out.read_text()
    for where in [*addresses, f"127.0.0.1:{broker_port}", f"127.0.0.1:{api_port}"]:
        host, port = where.removeprefix("http://").rsplit(":", 1)
        with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=2):
            pass
