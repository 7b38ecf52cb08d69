"""Acceptance: real `edge-agent run` processes, the real server and broker; one agent is
killed with SIGKILL mid-round and the run goes on without stalling."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from fleet_server.federation.spec import LocalTraining, RunSpec
from fleet_server.server import FleetServer

from .fl_helpers import MODEL, learning_agents, write_start_package
from .harness import admin_token, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
AGENTS = 6  # five that finish the run, one that is killed


def test_agent_processes_train_and_a_killed_agent_fails_fast(
    fleet: FleetServer, tmp_path: Path
) -> None:
    write_start_package(fleet.settings.data_dir / "models")
    handed: list[tuple[Path, dict[str, object]]] = []
    fleet.training.on_candidate = lambda path, lineage: handed.append((path, lineage))
    ids = [f"proc-{i}" for i in range(AGENTS)]
    token = admin_token(fleet.settings.api_url)
    with learning_agents(fleet, token, ids, tmp_path, seed=11) as agents:
        store = fleet.store
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
