"""Enrollment end to end: a real server with its managed broker, the real CLIs as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fleet_server.server import FleetServer

from .harness import admin_token, get_twin, put_desired, wait_for

BIN = Path(sys.executable).parent


def run(
    cmd: list[str], env: dict[str, str] | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}, **kw
    )  # type: ignore[call-overload]


def enroll(api: str, token: str, data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "edge-agent"), "enroll", "--server", api, "--token", token]
    return run([*cmd, "--data-dir", str(data_dir), *extra])


@pytest.mark.parametrize("fleet", ["sqlite", "postgresql"], indirect=True)
def test_enroll_connect_online_then_offline_on_kill(fleet: FleetServer, tmp_path: Path) -> None:
    api = fleet.settings.api_url
    ctl_env = {
        "FLEETCTL_SERVER": api,
        "FLEETCTL_TOKEN": admin_token(fleet.settings.api_url),
        "FLEETCTL_CONFIG": str(tmp_path / "ctl.json"),
    }
    added = run(
        [str(BIN / "fleetctl"), "--json", "devices", "add", "pump-7", "--tag", "site=berlin"],
        ctl_env,
    )
    assert added.returncode == 0, added.stderr
    token = json.loads(added.stdout)["token"]
    assert token.startswith("pump-7.")

    agent_dir = tmp_path / "agent"
    enrolled = enroll(api, token, agent_dir)
    assert enrolled.returncode == 0, enrolled.stderr
    key = agent_dir / "identity" / "device.key"
    assert key.stat().st_mode & 0o077 == 0  # the private key is the device's alone

    again = enroll(api, token, tmp_path / "other", "--force")
    assert again.returncode == 3  # identity problems exit with 3
    assert "already used" in again.stderr

    agent = subprocess.Popen(
        [str(BIN / "edge-agent"), "run", "--data-dir", str(agent_dir)],
        env={
            **os.environ,
            "EDGE_AGENT_TELEMETRY_INTERVAL_S": "0.3",
            "EDGE_AGENT_LOG_FORMAT": "text",
        },
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        store = fleet.store
        wait_for(lambda: store.get_device("pump-7").online, what="device online")
        wait_for(lambda: store.get_device("pump-7").reported is not None, what="reported state")
        wait_for(lambda: store.query_raw("pump-7", since=0, until=1e11), what="telemetry stored")
        device = store.get_device("pump-7")
        assert device.state == "enrolled" and device.tags == {"site": "berlin"}

        # desired state reaches the device and is acknowledged
        headers = {"Authorization": f"Bearer {ctl_env['FLEETCTL_TOKEN']}"}
        r = put_desired(api, headers, "pump-7", {"config": {"telemetry_interval_s": 0.5}})
        assert r.status_code == 200, r.text
        wait_for(
            lambda: get_twin(api, headers, "pump-7").json()["status"] == "in_sync",
            what="twin in sync",
        )
        wait_for(lambda: store.list_commands("pump-7")[0].status == "done", what="command ack")

        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(10)
        wait_for(lambda: not store.get_device("pump-7").online, what="offline via Last Will")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if agent.stderr:
            agent.stderr.close()


def test_revoked_device_cannot_reconnect_or_reenroll(fleet: FleetServer, tmp_path: Path) -> None:
    api = fleet.settings.api_url
    headers = {"Authorization": f"Bearer {admin_token(fleet.settings.api_url)}"}
    token = httpx.post(f"{api}/api/v1/devices", headers=headers, json={"id": "rev-9"}).json()[
        "token"
    ]
    agent_dir = tmp_path / "agent"
    enrolled = enroll(api, token, agent_dir)
    assert enrolled.returncode == 0, enrolled.stderr
    agent_log = tmp_path / "agent.log"
    agent = subprocess.Popen(
        [str(BIN / "edge-agent"), "run", "--data-dir", str(agent_dir)],
        stderr=agent_log.open("wb"),
        env={**os.environ, "EDGE_AGENT_TELEMETRY_INTERVAL_S": "0.5"},
    )
    rows = lambda: len(fleet.store.query_raw("rev-9", since=0, until=1e11))  # noqa: E731
    try:
        wait_for(lambda: fleet.store.get_device("rev-9").online, timeout=90, what="online")
        wait_for(lambda: rows() > 0, what="telemetry stored before the revocation")
        r = httpx.post(f"{api}/api/v1/devices/rev-9/revoke", headers=headers)
        assert r.status_code == 200 and r.json()["state"] == "revoked"
        wait_for(
            lambda: not fleet.store.get_device("rev-9").online,
            timeout=30,
            what="revoked device disconnected",
        )
        assert fleet.broker is not None and fleet.broker.wait_ready()
        # The broker re-read CRL and ACL: the agent's next batches are refused (it logs
        # each refusal); after the first, two more are refused and nothing new is stored.
        refused = lambda: agent_log.read_bytes().count(b"broker refused spooled")  # noqa: E731
        wait_for(lambda: refused() >= 1, timeout=60, what="a batch refused by the broker")
        before, seen = rows(), refused()
        wait_for(lambda: refused() >= seen + 2, timeout=60, what="two more batches refused")
        assert rows() == before
        assert not fleet.store.get_device("rev-9").online
    finally:
        agent.kill()
        agent.wait()
    r = httpx.post(f"{api}/api/v1/devices/rev-9/token", headers=headers)
    assert r.status_code == 403 and "revoked" in r.json()["detail"]


def test_enrollment_refusals(fleet: FleetServer, tmp_path: Path) -> None:
    from agent.identity import _csr, _new_key

    api = fleet.settings.api_url
    headers = {"Authorization": f"Bearer {admin_token(fleet.settings.api_url)}"}
    token = httpx.post(f"{api}/api/v1/devices", headers=headers, json={"id": "cn-1"}).json()[
        "token"
    ]
    wrong = _csr(_new_key(), "someone-else").decode()
    r = httpx.post(f"{api}/api/v1/enroll", json={"token": token, "csr_pem": wrong})
    assert r.status_code == 403
    assert "common name must be the device id" in r.json()["detail"]
    right = _csr(_new_key(), "cn-1").decode()
    r = httpx.post(f"{api}/api/v1/enroll", json={"token": "cn-1.nope-nope", "csr_pem": right})
    assert r.status_code == 403 and "unknown enrollment token" in r.json()["detail"]
    # an expired token
    fleet.enrollment._token_ttl = -1  # issue tokens that are already expired
    expired = httpx.post(f"{api}/api/v1/devices/cn-1/token", headers=headers).json()["token"]
    good = _csr(_new_key(), "cn-1").decode()
    r = httpx.post(f"{api}/api/v1/enroll", json={"token": expired, "csr_pem": good})
    assert r.status_code == 403 and "expired" in r.json()["detail"]
