"""End to end: the fleet server sets a desired model; the real ``edge-agent`` installs it.

The fleet server (real, with its managed mosquitto) carries the desired state
and the reported twin; the signed artifacts come from a real TUF repository
over loopback (``[updates] server_url``), since the server's own TUF endpoints
are built elsewhere.  The device reports each phase, and the server ends up
with ``update.phase == committed`` and the new model in ``reported.model`` —
or, for a model that fails its self-test, ``failed`` with the reason while the
old model keeps serving.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import agent.identity as identity_module
from agent.identity import enroll
from fleet_server.server import FleetServer

from .harness import ADMIN_PASSWORD, wait_for
from .ota_device_kit import model_target, package_bytes, publish_model
from .tuf_sim import RepoServer, TufRepo

BIN = Path(sys.executable).parent


@pytest.fixture
def repo_server() -> Iterator[RepoServer]:
    srv = RepoServer(TufRepo())
    yield srv
    srv.close()


def api_token(fleet: FleetServer) -> str:
    r = httpx.post(
        f"{fleet.settings.api_url}/api/v1/auth/login",
        json={"username": "admin", "password": ADMIN_PASSWORD},
    )
    r.raise_for_status()
    return str(r.json()["token"])


def twin(fleet: FleetServer, token: str, device_id: str) -> dict[str, Any]:
    r = httpx.get(
        f"{fleet.settings.api_url}/api/v1/devices/{device_id}/twin",
        headers={"Authorization": f"Bearer {token}"},
    )
    r.raise_for_status()
    doc: dict[str, Any] = r.json()
    return doc


def set_model(fleet: FleetServer, token: str, device_id: str, version: str) -> None:
    r = httpx.put(
        f"{fleet.settings.api_url}/api/v1/devices/{device_id}/twin/desired",
        json={"model": {"name": "digits", "version": version, "target": model_target(version)}},
        headers={"Authorization": f"Bearer {token}"},
    )
    r.raise_for_status()


def test_agent_installs_a_desired_model_and_reports_each_failure(
    fleet: FleetServer, repo_server: RepoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = api_token(fleet)
    api = fleet.settings.api_url
    r = httpx.post(
        f"{api}/api/v1/devices",
        json={"id": "ota-e2e-1"},
        headers={"Authorization": f"Bearer {token}"},
    )
    r.raise_for_status()
    # Enrollment hands out the TUF root (the fleet server adds ``tuf_root`` to its answer).
    real_post = identity_module._post
    monkeypatch.setattr(
        identity_module,
        "_post",
        lambda url, body, timeout: {
            **real_post(url, body, timeout),
            "tuf_root": repo_server.repo.root_json(),
        },
    )
    data_dir = tmp_path / "agent"
    enroll(data_dir, api, r.json()["token"])
    assert (data_dir / "tuf" / "root.json").read_text() == repo_server.repo.root_json()

    first = tmp_path / "digits-1.0.0.efpkg"
    first.write_bytes(package_bytes("1.0.0"))
    publish_model(repo_server.repo, "1.1.0")
    publish_model(repo_server.repo, "1.2.0", package_bytes("1.2.0", broken_self_test=True))
    env = {
        **os.environ,
        "EDGE_AGENT_MODEL": str(first),
        "EDGE_AGENT_TELEMETRY_INTERVAL_S": "0.5",
        "EDGE_AGENT_LOG_FORMAT": "text",
        "EDGE_AGENT_LOCAL_API__ENABLED": "false",
        "EDGE_AGENT_UPDATES__SERVER_URL": repo_server.url,
        "EDGE_AGENT_UPDATES__PROBATION_S": "1",
    }
    proc = subprocess.Popen(
        [str(BIN / "edge-agent"), "run", "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def reported() -> dict[str, Any]:
            return twin(fleet, token, "ota-e2e-1").get("reported") or {}

        def model_version() -> str | None:
            model = reported().get("model")
            return model.get("version") if model else None

        wait_for(lambda: model_version() == "1.0.0", timeout=60)
        set_model(fleet, token, "ota-e2e-1", "1.1.0")
        wait_for(
            lambda: (
                (reported().get("update") or {}).get("phase") == "committed"
                and model_version() == "1.1.0"
            ),
            timeout=120,
        )
        state = reported()
        assert state["update"]["target"] == model_target("1.1.0")
        assert state["slots"]["active"] in ("a", "b")
        assert state["firmware"]["version"] == "0.0.0" and state["firmware"]["slot"] == "a"

        set_model(fleet, token, "ota-e2e-1", "1.2.0")
        wait_for(lambda: (reported().get("update") or {}).get("phase") == "failed", timeout=120)
        state = reported()
        assert "self-test" in state["update"]["error"]
        assert model_version() == "1.1.0"  # the current model keeps serving
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
