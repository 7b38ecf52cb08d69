"""Acceptance: real `edge-agent run` processes, the real server and broker; one agent is
killed with SIGKILL mid-round and the run goes on without stalling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agent.samples import SampleStore
from fleet_server.federation.spec import LocalTraining, RunSpec
from fleet_server.modelkit.digits import split
from fleet_server.server import FleetServer

from .fl_helpers import MODEL, dirichlet_parts, write_start_package
from .harness import ADMIN_PASSWORD, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
BIN = Path(sys.executable).parent
AGENTS = 6  # five that finish the run, one that is killed


def enroll(api: str, token: str, device_id: str, data_dir: Path) -> None:
    r = httpx.post(
        f"{api}/api/v1/devices",
        headers={"Authorization": f"Bearer {token}"},
        json={"id": device_id, "tags": {"fl": "proc"}},
    )
    r.raise_for_status()
    done = subprocess.run(
        [
            str(BIN / "edge-agent"),
            "enroll",
            "--server",
            api,
            "--token",
            r.json()["token"],
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_agent_processes_train_and_a_killed_agent_fails_fast(
    fleet: FleetServer, tmp_path: Path
) -> None:
    write_start_package(fleet.settings.data_dir / "models")
    handed: list[tuple[Path, dict[str, object]]] = []
    fleet.training.on_candidate = lambda path, lineage: handed.append((path, lineage))
    api = fleet.settings.api_url
    token = httpx.post(
        f"{api}/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    ).json()["token"]
    data = split()
    parts = dirichlet_parts(data.y_train, AGENTS, 0.5, 11)
    ids = [f"proc-{i}" for i in range(AGENTS)]
    agents: dict[str, subprocess.Popen[str]] = {}
    env = {
        **os.environ,
        "EDGE_AGENT_TELEMETRY_INTERVAL_S": "0.3",
        "EDGE_AGENT_LOG_FORMAT": "text",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    try:
        for device_id, part in zip(ids, parts, strict=True):
            folder = tmp_path / device_id
            enroll(api, token, device_id, folder)
            samples = SampleStore(folder / "samples.db", max_samples=10_000)
            for row, label in zip(data.x_train[part], data.y_train[part], strict=True):
                samples.add(row, int(label))
            samples.close()
            agents[device_id] = subprocess.Popen(
                [str(BIN / "edge-agent"), "run", "--data-dir", str(folder)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        store = fleet.store

        def reported_samples(device_id: str) -> bool:
            t = store.latest_telemetry(device_id)  # type: ignore[attr-defined]
            return bool(t and t.learning and t.learning.labelled_samples > 0)

        wait_for(lambda: all(store.get_device(d).online for d in ids), 60, "agents online")
        wait_for(lambda: all(reported_samples(d) for d in ids), 60, "learning telemetry")

        spec = RunSpec(
            model=MODEL,
            target="tag:fl=proc",
            rounds=10,
            min_clients=5,
            round_timeout_s=300,
            local=LocalTraining(epochs=5, lr=0.2, batch_size=16),
            rollout="canary 10%, waves 50% 100%",
        )
        victim = ids[-1]
        # Frozen (still connected, still "online") so it cannot answer before it dies:
        # the round's instruction is certainly outstanding when SIGKILL arrives.
        os.kill(agents[victim].pid, signal.SIGSTOP)
        run = fleet.training.start_run(spec, actor="test")
        wait_for(
            lambda: fleet.training.grid is not None and fleet.training.grid.owed(victim) > 0,
            60,
            "victim's instruction sent",
        )
        os.kill(agents[victim].pid, signal.SIGKILL)

        def finished() -> bool:
            return store.get_training_run(run.id).status not in ("pending", "running")  # type: ignore[attr-defined]

        wait_for(finished, 300, "run finished")
        final = store.get_training_run(run.id)  # type: ignore[attr-defined]
        assert final.status == "completed", final
        rounds = store.list_rounds(run.id)  # type: ignore[attr-defined]
        assert [r.round for r in rounds] == list(range(1, 11))
        assert rounds[0].failures.get("offline") == 1 and "timeout" not in rounds[0].failures
        assert victim not in {d for r in rounds for d in r.participants}
        assert all(len(r.participants) == 5 for r in rounds)
        assert rounds[-1].accuracy > rounds[0].accuracy and rounds[-1].accuracy > 0.8
        assert final.result["handed_over"] is True
        assert {p.name.split("-1.1.0-")[1] for p, _ in handed} == {
            "onnx-float32.efpkg",
            "onnx-int8.efpkg",
            "tflite-float32.efpkg",
            "tflite-int8.efpkg",
        }
        lineage = handed[0][1]
        assert lineage["run_id"] == run.id and lineage["rounds"] == 10
        assert lineage["rollout"] == "canary 10%, waves 50% 100%"
        assert sorted(lineage["participants"]) == sorted(ids[:-1])  # type: ignore[arg-type]
        print(json.dumps([round(r.accuracy, 3) for r in rounds]))
    finally:
        for proc in agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in agents.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
