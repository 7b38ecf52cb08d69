"""A shadow step with the real ``edge-agent``: the server's own TUF, a local app, no switch first.

The artifacts are pushed through the API (1.1.0 is the float32 build of the
int8 1.0.0 the device serves), the device enrolls for real and gets the TUF
root with it, and a local app sends predictions and their labels to the
agent's local API.  The rollout's shadow step makes the agent fetch and verify
1.1.0 and run it beside 1.0.0; the server judges the shadow gates on what the
agent's telemetry reports, and only then does the device switch.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from agent import localclient
from agent.identity import enroll
from fleet_server.server import FleetServer

from .agentproc import AgentProcess
from .harness import ADMIN_PASSWORD, wait_for
from .ota_server import DIGITS, MODELS, model_version


def _app(agent: AgentProcess, stop: threading.Event) -> None:
    data = np.load(Path(__file__).with_name("data") / "digits_holdout.npz")
    x, y = data["x"].astype(np.float32), data["y"]
    i = 0
    while not stop.is_set():
        rows = slice(i % (len(y) - 4), i % (len(y) - 4) + 4)
        i += 4
        try:
            status, doc = localclient.predict(agent.address, x[rows], timeout=10)
            if status == 200:
                for row, label in zip(doc["predictions"], y[rows], strict=True):
                    body = json.dumps({"prediction_id": row["id"], "label": int(label)}).encode()
                    localclient.request(agent.address, "POST", "/v1/feedback", body, timeout=10)
        except OSError:
            pass
        stop.wait(0.02)


def test_the_agent_runs_the_candidate_in_the_shadow_before_the_switch(
    fleet: FleetServer, tmp_path: Path
) -> None:
    api = fleet.settings.api_url
    login = httpx.post(
        f"{api}/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    auth = {"Authorization": f"Bearer {login.json()['token']}"}
    candidate = model_version(tmp_path, "1.1.0", MODELS / "digits-1.0.0-onnx-float32.efpkg")
    for package in (DIGITS, candidate):
        pushed = httpx.post(
            f"{api}/api/v1/artifacts/models",
            content=package.read_bytes(),
            headers={**auth, "Content-Type": "application/octet-stream"},
            timeout=60,
        )
        assert pushed.status_code == 201, pushed.text
    r = httpx.post(f"{api}/api/v1/devices", json={"id": "shadow-1"}, headers=auth)
    r.raise_for_status()
    data_dir = tmp_path / "shadow-1"
    enroll(data_dir, api, r.json()["token"])
    agent = AgentProcess(data_dir, DIGITS, EDGE_AGENT_UPDATES__PROBATION_S="1")
    stop = threading.Event()
    app = threading.Thread(target=_app, args=(agent, stop), daemon=True)

    def get(path: str) -> Any:
        got = httpx.get(f"{api}/api/v1{path}", headers=auth, timeout=30)
        got.raise_for_status()
        return got.json()

    def status(path: str) -> Any:
        """``get`` for polling: a request that stalls on a loaded machine is asked again."""
        try:
            return get(path)
        except httpx.TransportError:
            return {}

    def running() -> str | None:
        reported = status("/devices/shadow-1/twin").get("reported") or {}
        return (reported.get("model") or {}).get("version")

    try:
        wait_for(lambda: running() == "1.0.0", 60, "the agent reports 1.0.0")
        app.start()
        created = httpx.post(
            f"{api}/api/v1/rollouts",
            json={
                "artifact": "digits@1.1.0",
                "target": "all",
                "shadow": "3s",
                "probation": "1s",
                "gates": ["shadow_agreement>=0.9", "shadow_accuracy_delta>=-0.05"],
                "gate_min_samples": 10,
                "vs_parent": False,
            },
            headers=auth,
        )
        assert created.status_code == 201, created.text
        rid = created.json()["id"]
        wait_for(lambda: status(f"/rollouts/{rid}").get("phase") == "shadowing", 30, "shadowing")
        assert running() == "1.0.0"
        done: dict[str, Any] = {}

        def finished() -> bool:
            done.update(status(f"/rollouts/{rid}"))
            return done.get("status") in ("completed", "halted", "rolled_back")

        wait_for(finished, 180, "the rollout to finish")
        assert done["status"] == "completed", done
        gates = {g["metric"]: g for g in done["shadow"]["gates"]}
        agreement = gates["shadow_agreement"]
        assert agreement["passed"] and agreement["samples"] >= 10 and agreement["value"] >= 0.9
        delta = gates["shadow_accuracy_delta"]
        assert delta["passed"] and delta["samples"] >= 10
        wait_for(lambda: running() == "1.1.0", 60, "the switch after the shadow step")
    finally:
        stop.set()
        agent.stop()
