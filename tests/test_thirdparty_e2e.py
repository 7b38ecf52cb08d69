"""Bring your own model, end to end: pack with fleetctl, push, roll out, serve, monitor.

A real fleet server (managed mosquitto, TUF, registry), a real ``edge-agent``
process enrolled with it, and models that other tools wrote: a CNN from
``torch.onnx.export`` (int8), an IsolationForest from skl2onnx and silero-vad's
stateful ONNX model from its PyPI wheel.  Each goes ``fleetctl models pack`` ->
``fleetctl models push`` -> ``fleetctl rollout create`` -> the device installs
it over TUF -> an app asks the local API (an image file for the CNN, named
inputs and a session for the VAD) -> the device's telemetry reaches the server.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from agent import localclient
from agent.identity import enroll
from fleet_server.server import FleetServer

from .agentproc import DIST, AgentProcess
from .fleetctl_kit import fleetctl, login_admin
from .harness import ADMIN_PASSWORD, wait_for
from .thirdparty_kit import (
    CNN_IMAGES,
    audio,
    cnn_request,
    digits_truth,
    iforest_request,
    pack_args,
    silero_model,
    vad_request,
)

# Every test runs fleetctl against its own config file, never the developer's.
pytestmark = pytest.mark.usefixtures("fleetctl_config")


class Fleet:
    def __init__(self, fleet: FleetServer) -> None:
        self.api = fleet.settings.api_url
        r = httpx.post(
            f"{self.api}/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
        )
        r.raise_for_status()
        self.auth = {"Authorization": f"Bearer {r.json()['token']}"}
        login_admin(self.api)

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.api}/api/v1{path}", headers=self.auth)
        r.raise_for_status()
        return r.json()

    def reported_model(self, device: str) -> str | None:
        model = (self.get(f"/devices/{device}/twin").get("reported") or {}).get("model") or {}
        return f"{model['name']}@{model['version']}" if model else None

    def device(self, tmp_path: Path, device: str) -> AgentProcess:
        r = httpx.post(f"{self.api}/api/v1/devices", json={"id": device}, headers=self.auth)
        r.raise_for_status()
        data_dir = tmp_path / device
        enroll(data_dir, self.api, r.json()["token"])
        return AgentProcess(
            data_dir,
            DIST / "digits-1.0.0-onnx-float32.efpkg",
            EDGE_AGENT_TELEMETRY_INTERVAL_S="0.5",
            EDGE_AGENT_UPDATES__PROBATION_S="1",
        )

    def pack_push_roll_out(self, args: list[str], spec: str, device: str) -> None:
        code, out, err = fleetctl(["--json", "models", "pack", *args])
        assert code == 0, err
        package = json.loads(out)["file"]
        code, _, err = fleetctl(["models", "push", package])
        assert code == 0, err
        code, out, err = fleetctl(
            [
                "--json",
                "rollout",
                "create",
                "--artifact",
                spec,
                "--target",
                f"id:{device}",
                "--probation",
                "1s",
                "--gates-allow-no-data",
            ]
        )
        assert code == 0, err
        rollout = json.loads(out)["id"]
        wait_for(lambda: self.reported_model(device) == spec.split(":")[0], 120, f"{spec} live")
        # The device is free for the next rollout once this one has finished its probation.
        wait_for(
            lambda: self.get(f"/rollouts/{rollout}")["status"] == "completed", 120, "completed"
        )


def _post(agent: AgentProcess, body: bytes, content_type: str) -> dict[str, Any]:
    status, doc = localclient.request(agent.address, "POST", "/v1/predict", body, content_type)
    assert status == 200, doc
    assert isinstance(doc, dict)
    return doc


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_torch_cnn_and_sklearn_anomaly_model_from_pack_to_the_local_api(
    fleet: FleetServer, tmp_path: Path
) -> None:
    ops = Fleet(fleet)
    agent = ops.device(tmp_path, "byom-1")
    try:
        wait_for(lambda: ops.reported_model("byom-1") == "digits@1.0.0", 60, "first model")
        ops.pack_push_roll_out(
            pack_args(cnn_request(tmp_path, quantize="int8", output=tmp_path / "cnn.efpkg")),
            "digits-torch@1.0.0",
            "byom-1",
        )
        code, shown, err = fleetctl(["models", "show", "digits-torch@1.0.0"])
        assert code == 0, err
        assert "task: classification" in shown and "int8 (static-qdq)" in shown
        images, truth = np.load(CNN_IMAGES), digits_truth()
        answers = [_post(agent, _png(images[i]), "image/png") for i in range(12)]
        assert all(a["task"] == "classification" for a in answers)
        got = [a["predictions"][0]["class_id"] for a in answers]
        assert sum(g == t for g, t in zip(got, truth[:12], strict=True)) >= 10
        status, model = localclient.request(agent.address, "GET", "/v1/model")
        assert status == 200 and model["task"]["kind"] == "classification"
        assert model["inputs"][0]["preprocessing"]["layout"] == "nchw"

        ops.pack_push_roll_out(
            pack_args(iforest_request(tmp_path, output=tmp_path / "iforest.efpkg")),
            "pump-anomaly@1.0.0",
            "byom-1",
        )
        rows = [[55.0, 2.5, 4.0, 3.5]] * 30 + [[120.0, 25.0, 30.0, 0.1]]
        doc = _post(agent, json.dumps({"inputs": rows}).encode(), "application/json")
        assert doc["task"] == "anomaly"
        assert [p["anomaly"] for p in doc["predictions"]] == [False] * 30 + [True]

        def counted() -> int:
            """Inferences of the anomaly model in the telemetry the server ingested."""
            raw = ops.get("/devices/byom-1/telemetry?resolution=raw&limit=200")["raw"]
            stats = [b["inference"] for b in raw if b.get("inference")]
            return sum(s["count"] for s in stats if s["model"] == "pump-anomaly")

        wait_for(lambda: counted() >= 31, 60, "telemetry of the anomaly model")
    finally:
        agent.stop()


def test_silero_vad_streams_through_the_local_api_with_a_session(
    fleet: FleetServer, tmp_path: Path
) -> None:
    model = silero_model(tmp_path)
    ops = Fleet(fleet)
    agent = ops.device(tmp_path, "byom-vad")
    try:
        wait_for(lambda: ops.reported_model("byom-vad") == "digits@1.0.0", 60, "first model")
        ops.pack_push_roll_out(
            pack_args(vad_request(tmp_path, model=model, output=tmp_path / "vad.efpkg")),
            "silero-vad@6.2.3",
            "byom-vad",
        )
        chunks = audio()[: 40 * 512].reshape(-1, 512)
        session = None
        for chunk in chunks:
            body: dict[str, Any] = {"inputs": {"input": chunk.tolist()}}
            if session:
                body["session"] = session
            doc = _post(agent, json.dumps(body).encode(), "application/json")
            assert session is None or doc["session"] == session
            session = doc["session"]
            p = doc["predictions"][0]["values"]["output"][0]
            assert 0.0 <= p <= 1.0
        status, err = localclient.request(
            agent.address,
            "POST",
            "/v1/predict",
            json.dumps({"inputs": {"state": [0.0]}}).encode(),
            "application/json",
        )
        assert status == 422 and "takes the inputs ['input']" in json.dumps(err)
    finally:
        agent.stop()
