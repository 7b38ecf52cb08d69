"""Acceptance for signed OTA rollouts: ten real ``edge-agent`` processes, nothing simulated.

Real fleet server (store, managed mosquitto with mTLS and ACLs, registry, TUF
repository, rollout driver), real enrollment (the TUF root comes with it),
real agents that download, verify, stage, self-test, switch and commit.  An
app plays the devices' users: it sends predictions to every agent's local API
and returns the true label for each one, so the fleet's telemetry carries an
``accuracy`` the gate can judge.

* v1.1.0 rolls out canary 1 of 10, then waves of 50% and 100%; the server is
  restarted mid-wave and the rollout carries on from where it was; all ten
  devices report v1.1.0.
* v1.2.0 is a model whose classes are shifted by one: a well-formed package
  whose self-test (recorded from that very model) passes on the device, but
  whose answers are wrong.  The canary's accuracy gate fails, the rollout halts
  by itself and the canary device is put back on v1.1.0 with no operator.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from agent import localclient
from agent.identity import enroll
from edgefleet_contract.package import Lineage, read_package
from fleet_server.config import ServerSettings
from fleet_server.modelkit.build import build_package
from fleet_server.modelkit.digits import split
from fleet_server.modelkit.network import Network
from fleet_server.server import FleetServer, initialize

from .agentproc import AgentProcess
from .harness import ADMIN_PASSWORD, HTTP_TIMEOUT, server_settings, wait_for, wait_ports_free
from .ota_server import MODELS, model_version

V1 = MODELS / "digits-1.0.0-onnx-float32.efpkg"
DEVICES = 10
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def shifted_model(out: Path, version: str) -> Path:
    """V1's network with its output classes rolled by one, packaged and self-tested as built."""
    pkg = read_package(V1)
    network = Network.from_package(pkg)
    last = network.layers[-1]
    assert last.bias is not None
    weights = dict(network.weights)
    w = weights[last.weight]
    axis = list(w.shape).index(network.classes)
    weights[last.weight] = np.roll(w, 1, axis=axis)
    weights[last.bias] = np.roll(weights[last.bias], 1)
    blob = build_package(
        Network(network.input_shape, network.layers, weights),
        name="digits",
        version=version,
        flavor="onnx-float32",
        preprocessing=pkg.manifest.preprocessing,
        labels=pkg.manifest.labels,
        reference=split().x_train,
        lineage=Lineage(source="upload", parent="digits@1.1.0"),
    )
    path = out / f"digits-{version}-onnx-float32.efpkg"
    path.write_bytes(blob)
    return path


class Fleet:
    """The server, restartable on the same data dir and ports."""

    def __init__(self, tmp_path: Path) -> None:
        settings = server_settings(tmp_path / "fleet")
        assert isinstance(settings, ServerSettings)
        initialize(settings, admin_password=ADMIN_PASSWORD)
        self.settings = settings
        self.server = FleetServer(settings)
        self.server.start()
        self.api = settings.api_url
        self._token = ""

    def restart(self) -> None:
        self.server.stop()
        wait_ports_free(self.settings.api.port, self.settings.broker.port)
        self.server = FleetServer(self.settings)
        self.server.start()
        self._token = ""

    @property
    def auth(self) -> dict[str, str]:
        if not self._token:
            r = httpx.post(
                f"{self.api}/api/v1/auth/login",
                json={"username": "admin", "password": ADMIN_PASSWORD},
                timeout=HTTP_TIMEOUT,  # right after a restart, ten agents reconnecting
            )
            r.raise_for_status()
            self._token = str(r.json()["token"])
        return {"Authorization": f"Bearer {self._token}"}

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.api}/api/v1{path}", headers=self.auth, timeout=30)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        return httpx.post(
            f"{self.api}/api/v1{path}", headers={**self.auth, **(headers or {})}, timeout=60, **kw
        )

    def push(self, package: Path) -> None:
        r = self.post(
            "/artifacts/models",
            content=package.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 201, r.text

    def running(self, device_id: str) -> str | None:
        reported = self.get(f"/devices/{device_id}/twin").get("reported") or {}
        return (reported.get("model") or {}).get("version")


class Users(threading.Thread):
    """Predictions and their true labels, round-robin over the agents' local APIs."""

    def __init__(self, agents: list[AgentProcess]) -> None:
        super().__init__(daemon=True)
        data = split()
        self.x, self.y = data.x_test, data.y_test
        self.addresses = [a.address for a in agents]
        self.stop = threading.Event()
        self.answered = 0

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            for where in self.addresses:
                rows = slice(i % (len(self.y) - 4), i % (len(self.y) - 4) + 4)
                i += 4
                try:
                    status, doc = localclient.predict(where, self.x[rows], timeout=10)
                    if status != 200:
                        continue
                    for row, label in zip(doc["predictions"], self.y[rows], strict=True):
                        localclient.request(
                            where,
                            "POST",
                            "/v1/feedback",
                            json.dumps({"prediction_id": row["id"], "label": int(label)}).encode(),
                            timeout=10,
                        )
                    self.answered += 1
                except OSError:
                    continue
            self.stop.wait(0.05)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    yield f
    f.server.stop()


def rollout(fleet: Fleet, artifact: str, waves: str) -> str:
    r = fleet.post(
        "/rollouts",
        json={
            "artifact": artifact,
            "target": "tag:acceptance=ota",
            "canary": "10%",
            "waves": waves,
            "pace": "60/min",
            "probation": "12s",  # long enough for feedback telemetry to arrive on a busy host
            "gates": ["accuracy>=0.8", "error_rate<0.05", "crash_loops==0"],
            "device_timeout": "5m",
            "seed": 5,
        },
    )
    assert r.status_code == 201, r.text
    doc = r.json()
    assert [w["size"] for w in doc["waves"]] == [1, 4, 5], doc["waves"]
    return str(doc["id"])


def test_rollout_with_ten_real_agents_survives_a_restart_and_halts_a_bad_model(
    fleet: Fleet, tmp_path: Path
) -> None:
    v2 = model_version(tmp_path, "1.1.0", source=V1)
    v3 = shifted_model(tmp_path, "1.2.0")
    for package in (V1, v2):
        fleet.push(package)
    ids = [f"acc-{i}" for i in range(DEVICES)]
    agents: list[AgentProcess] = []
    users: Users | None = None
    try:
        for device_id in ids:
            r = fleet.post("/devices", json={"id": device_id, "tags": {"acceptance": "ota"}})
            r.raise_for_status()
            enroll(tmp_path / device_id, fleet.api, r.json()["token"])
            agents.append(
                AgentProcess(
                    tmp_path / device_id,
                    V1,
                    EDGE_AGENT_TELEMETRY_INTERVAL_S="0.5",
                    EDGE_AGENT_UPDATES__PROBATION_S="1",
                )
            )
        wait_for(lambda: all(fleet.running(d) == "1.0.0" for d in ids), 120, "agents on v1")
        users = Users(agents)
        users.start()

        # v1.1.0: canary, then the waves; the server restarts mid-wave.
        first = rollout(fleet, "digits@1.1.0", "50%,100%")

        def status(rollout_id: str) -> dict[str, Any]:
            doc: dict[str, Any] = fleet.get(f"/rollouts/{rollout_id}")
            return doc

        def wave_started() -> bool:
            doc = status(first)
            if doc["status"] != "wave":
                return doc["status"] not in ("pending", "canary")  # ended: the assert says why
            return any(d["wave"] >= 1 and d["status"] != "queued" for d in doc["devices_detail"])

        wait_for(wave_started, 240, "wave 1 under way")
        before = status(first)
        assert before["status"] == "wave", before["reason"]
        assert before["succeeded"] < DEVICES
        sent_before = {d["device_id"] for d in before["devices_detail"] if d["status"] != "queued"}
        fleet.restart()
        after = status(first)
        assert after["wave"] >= before["wave"] >= 1 and after["succeeded"] >= before["succeeded"]
        wait_for(lambda: status(first)["status"] not in ("canary", "wave"), 300, "rollout ends")
        done = status(first)
        assert done["status"] == "completed", (done["reason"], done["devices_detail"])
        assert done["succeeded"] == DEVICES
        canary_gates = {g["metric"]: g for g in done["waves"][0]["gates"]}
        assert canary_gates["accuracy"]["passed"] and canary_gates["accuracy"]["value"] >= 0.8
        assert all(w["state"] == "passed" for w in done["waves"]), done["waves"]
        wait_for(lambda: all(fleet.running(d) == "1.1.0" for d in ids), 120, "all on v1.1.0")
        # The restart resumed: the devices reached before it were not sent the update again.
        attempts = {d["device_id"]: d["attempts"] for d in done["devices_detail"]}
        assert all(attempts[d] == 1 for d in sent_before), attempts
        print(f"restarted with {len(sent_before)} devices reached, at {before['phase']}")

        # v1.2.0: passes its self-test on the device, fails the canary's accuracy gate.
        fleet.push(v3)
        second = rollout(fleet, "digits@1.2.0", "50%,100%")
        canary = status(second)["devices_detail"][0]["device_id"]
        wait_for(
            lambda: status(second)["status"] not in ("pending", "canary"), 240, "canary judged"
        )
        wait_for(
            lambda: (
                fleet.running(canary) == "1.1.0"
                and status(second)["status"] in ("halted", "rolled_back")
            ),
            240,
            "canary back on v1.1.0",
        )
        halted = status(second)
        assert halted["status"] in ("halted", "rolled_back"), halted
        gate = {g["metric"]: g for g in halted["waves"][0]["gates"]}["accuracy"]
        assert not gate["passed"] and gate["value"] < 0.5, gate
        assert "accuracy" in (halted["reason"] or ""), halted["reason"]
        # back on v1.1.0 it keeps a short probation before it commits: wait for that
        wait_for(
            lambda: (
                fleet.get(f"/devices/{canary}/twin")["reported"]["update"]["phase"] == "committed"
            ),
            60,
            "the canary's return to v1.1.0 committed",
        )
        others = [d for d in ids if d != canary]
        assert all(fleet.running(d) == "1.1.0" for d in others)
        assert {d["device_id"] for d in halted["devices_detail"] if d["wave"] > 0} == set(others)
        assert all(d["attempts"] == 0 for d in halted["devices_detail"] if d["wave"] > 0)
        assert users.answered > 0
    finally:
        if users is not None:
            users.stop.set()
            users.join(30)
        for a in agents:
            a.stop()
