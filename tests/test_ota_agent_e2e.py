"""End to end: the fleet server sets a desired model; the real ``edge-agent`` installs it.

The fleet server (real, with its managed mosquitto) carries the desired state
and the reported twin.  The last test is the whole loop with nothing staged:
artifacts pushed through the API, signed by the server, the TUF root handed
out at enrollment, installed from the server's ``/tuf/`` with a delta.  The
others take the artifacts from a test TUF repository over loopback
(``[updates] server_url``, as a device behind an artifact mirror would) so
faults can be staged there.  The device reports each phase, and the server
ends up with ``update.phase == committed`` and the new model in
``reported.model`` -- or, for a model that fails its self-test, ``failed`` with
the reason while the old model keeps serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import agent.identity as identity_module
from agent.identity import enroll
from fleet_server.server import FleetServer

from .harness import admin_token, get_twin, put_desired, wait_for
from .ota_device_kit import model_target, package_bytes, publish_model
from .ota_server import DIGITS, model_version
from .tuf_sim import RepoServer

BIN = Path(sys.executable).parent


def twin(fleet: FleetServer, token: str, device_id: str) -> dict[str, Any]:
    r = get_twin(fleet.settings.api_url, {"Authorization": f"Bearer {token}"}, device_id)
    r.raise_for_status()
    doc: dict[str, Any] = r.json()
    return doc


def set_model(fleet: FleetServer, token: str, device_id: str, version: str) -> None:
    model = {"name": "digits", "version": version, "target": model_target(version)}
    headers = {"Authorization": f"Bearer {token}"}
    r = put_desired(fleet.settings.api_url, headers, device_id, {"model": model})
    r.raise_for_status()


def enrolled_agent(
    fleet: FleetServer,
    repo_server: RepoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    device_id: str,
) -> tuple[Path, dict[str, str]]:
    """Enroll ``device_id`` (the enroll answer carries the TUF root); return its dir and env."""
    token = admin_token(fleet.settings.api_url)
    api = fleet.settings.api_url
    r = httpx.post(
        f"{api}/api/v1/devices",
        json={"id": device_id},
        headers={"Authorization": f"Bearer {token}"},
    )
    r.raise_for_status()
    real_post = identity_module._post
    monkeypatch.setattr(
        identity_module,
        "_post",
        lambda url, body, timeout: {
            **real_post(url, body, timeout),
            "tuf_root": repo_server.repo.root_json(),
        },
    )
    data_dir = tmp_path / device_id
    enroll(data_dir, api, r.json()["token"])
    first = tmp_path / "digits-1.0.0.efpkg"
    first.write_bytes(package_bytes("1.0.0"))
    env = {
        **os.environ,
        "EDGE_AGENT_MODEL": str(first),
        "EDGE_AGENT_TELEMETRY_INTERVAL_S": "0.5",
        "EDGE_AGENT_LOG_FORMAT": "text",
        "EDGE_AGENT_LOCAL_API__ENABLED": "false",
        "EDGE_AGENT_UPDATES__SERVER_URL": repo_server.url,
        "EDGE_AGENT_UPDATES__PROBATION_S": "1",
    }
    return data_dir, env


def start_agent(data_dir: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "edge-agent"), "run", "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def stop_agent(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_edge_agent_killed_mid_download_resumes_after_restart(
    fleet: FleetServer, repo_server: RepoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = admin_token(fleet.settings.api_url)
    data_dir, env = enrolled_agent(fleet, repo_server, tmp_path, monkeypatch, "ota-e2e-2")
    publish_model(repo_server.repo, "1.1.0")
    repo_server.faults.throttle_s = 0.1  # a slow link: 2 kB per 100 ms

    def reported() -> dict[str, Any]:
        return twin(fleet, token, "ota-e2e-2").get("reported") or {}

    proc = start_agent(data_dir, env)
    try:
        wait_for(lambda: (reported().get("model") or {}).get("version") == "1.0.0", timeout=60)
        set_model(fleet, token, "ota-e2e-2", "1.1.0")
        partials = data_dir / "updates"
        wait_for(lambda: any(p.stat().st_size > 4096 for p in partials.glob("*.part")), timeout=60)
        proc.kill()  # power cut mid-download
        proc.wait()
        repo_server.faults.throttle_s = 0.0
        before = len(repo_server.requests)
        proc = start_agent(data_dir, env)
        wait_for(
            lambda: (
                (reported().get("update") or {}).get("phase") == "committed"
                and (reported().get("model") or {}).get("version") == "1.1.0"
            ),
            timeout=120,
        )
        ranges = [r for p, r in repo_server.requests[before:] if p.startswith("/tuf/targets/")]
        assert ranges and ranges[0] is not None and ranges[0] != "bytes=0-"
    finally:
        stop_agent(proc)


def test_agent_installs_a_desired_model_and_reports_each_failure(
    fleet: FleetServer, repo_server: RepoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = admin_token(fleet.settings.api_url)
    data_dir, env = enrolled_agent(fleet, repo_server, tmp_path, monkeypatch, "ota-e2e-1")
    assert (data_dir / "tuf" / "root.json").read_text() == repo_server.repo.root_json()
    publish_model(repo_server.repo, "1.1.0")
    publish_model(repo_server.repo, "1.2.0", package_bytes("1.2.0", broken_self_test=True))
    proc = start_agent(data_dir, env)
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
        assert state["update"]["bytes_transferred"] > 0
        assert state["slots"]["active"] in ("a", "b")
        assert state["firmware"]["version"] == "0.0.0" and state["firmware"]["slot"] == "a"

        set_model(fleet, token, "ota-e2e-1", "1.2.0")
        wait_for(lambda: (reported().get("update") or {}).get("phase") == "failed", timeout=120)
        state = reported()
        assert "self-test" in state["update"]["error"]
        assert model_version() == "1.1.0"  # the current model keeps serving
    finally:
        stop_agent(proc)


def test_agent_updates_from_the_fleet_servers_own_tuf_repository(
    fleet: FleetServer, tmp_path: Path
) -> None:
    """No test repository: push through the API, enroll for real, install from ``/tuf/``."""
    token = admin_token(fleet.settings.api_url)
    api = fleet.settings.api_url
    auth = {"Authorization": f"Bearer {token}"}
    v2 = model_version(tmp_path, "1.1.0")
    for package in (DIGITS, v2):
        pushed = httpx.post(
            f"{api}/api/v1/artifacts/models",
            content=package.read_bytes(),
            headers={**auth, "Content-Type": "application/octet-stream"},
        )
        assert pushed.status_code == 201, pushed.text
    target = pushed.json()["target_path"]
    fleet.deltas.wait(60)  # the 1.0.0 -> 1.1.0 patch is made in the background on push
    r = httpx.post(f"{api}/api/v1/devices", json={"id": "ota-e2e-3"}, headers=auth)
    r.raise_for_status()
    data_dir = tmp_path / "ota-e2e-3"
    enroll(data_dir, api, r.json()["token"])
    assert (data_dir / "tuf" / "root.json").exists()  # the trust anchor came with enrollment
    env = {
        **os.environ,
        "EDGE_AGENT_MODEL": str(DIGITS),
        "EDGE_AGENT_TELEMETRY_INTERVAL_S": "0.5",
        "EDGE_AGENT_LOG_FORMAT": "text",
        "EDGE_AGENT_LOCAL_API__ENABLED": "false",
        "EDGE_AGENT_UPDATES__PROBATION_S": "1",
    }

    def reported() -> dict[str, Any]:
        return twin(fleet, token, "ota-e2e-3").get("reported") or {}

    proc = start_agent(data_dir, env)
    try:
        wait_for(lambda: (reported().get("model") or {}).get("version") == "1.0.0", timeout=60)
        model = {"name": "digits", "version": "1.1.0", "target": target}
        r = put_desired(api, auth, "ota-e2e-3", {"model": model})
        r.raise_for_status()
        wait_for(
            lambda: (
                (reported().get("update") or {}).get("phase") == "committed"
                and (reported().get("model") or {}).get("version") == "1.1.0"
            ),
            timeout=120,
        )
        update = reported()["update"]
        assert update["delta_used"] and 0 < update["bytes_transferred"] < v2.stat().st_size
    finally:
        stop_agent(proc)
