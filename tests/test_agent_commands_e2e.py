"""Commands through the real server, broker and ``edge-agent run``: refusals, the twin
commands, certificate renewal on request, and the server re-sending desired state.

Commands go out through the server's own link, as the API would send them, but without
the API's check of the device's declared names: the device must refuse by itself what
it does not know, cannot parse or receives too late."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet_contract.messages import Command, DesiredState
from fleet_server.server import FleetServer
from fleet_server.store.base import CommandRecord

from .agentproc import DIST
from .harness import admin_token, enroll_agent, wait_for

MODEL = DIST / "digits-1.0.0-onnx-int8.efpkg"
DEVICE = "cmd-real"


@contextlib.contextmanager
def running_agent(fleet: FleetServer, tmp_path: Path, **env: str) -> Iterator[Path]:
    """One enrolled ``edge-agent run`` process (``env`` added), online and reporting."""
    folder = tmp_path / DEVICE
    api = fleet.settings.api_url
    enroll_agent(api, admin_token(api), DEVICE, folder, tags={"site": "cmd"})
    agent_env = {
        **os.environ,
        "EDGE_AGENT_MODEL": str(MODEL),
        "EDGE_AGENT_LOCAL_API__PORT": "0",
        "EDGE_AGENT_LOG_FORMAT": "text",
        **env,
    }
    with (tmp_path / "agent.log").open("ab") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "edge-agent"), "run", "--data-dir", str(folder)],
            env=agent_env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: (d := fleet.store.get_device(DEVICE)).online and d.reported is not None,
            60,
            "the agent online and reporting",
        )
        yield folder
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def agent(fleet: FleetServer, tmp_path: Path) -> Iterator[Path]:
    with running_agent(fleet, tmp_path) as folder:
        yield folder


def send(
    fleet: FleetServer, name: str, args: dict[str, Any] | None = None, *, expires_in: float = 600.0
) -> CommandRecord:
    """Send one command as the server does and wait for the device's answer."""
    now = time.time()
    command = Command(
        id="c-" + secrets.token_hex(8),
        name=name,
        args=args or {},
        ts=now,
        expires_at=now + expires_in,
    )
    fleet.store.add_command(CommandRecord(command.id, DEVICE, name, command.args, now, "test"))
    fleet.link.send_command(DEVICE, command)

    def answered() -> CommandRecord | None:
        found = [c for c in fleet.store.list_commands(DEVICE) if c.id == command.id]
        return found[0] if found and found[0].status != "sent" else None

    wait_for(lambda: answered() is not None, 60, f"an answer to {name}")
    record = answered()
    assert record is not None
    return record


def test_the_daemon_refuses_unknown_invalid_and_expired_commands(
    fleet: FleetServer, agent: Path
) -> None:
    ok = send(fleet, "ping")  # positive control: the same path, an acceptable command
    assert (ok.status, ok.detail) == ("done", "pong")
    unknown = send(fleet, "frobnicate")
    assert unknown.status == "rejected" and "unknown command 'frobnicate'" in unknown.detail
    assert "report_state" in unknown.detail and "renew_cert" in unknown.detail  # known names
    invalid = send(fleet, "set_desired", {"version": "soon"})
    assert invalid.status == "rejected", invalid
    assert invalid.detail.startswith("invalid arguments: version:"), invalid.detail
    expired = send(fleet, "ping", expires_in=-60.0)
    assert expired.status == "rejected" and "expired" in expired.detail
    # None of them changed what the device reports, and it still answers.
    assert send(fleet, "ping").status == "done"
    assert fleet.store.get_device(DEVICE).reported.desired_version == 0  # type: ignore[union-attr]


def test_report_state_and_renew_cert_on_request(fleet: FleetServer, agent: Path) -> None:
    before = fleet.store.get_device(DEVICE)
    assert before.reported_at is not None and before.cert_serial is not None
    reported = send(fleet, "report_state")
    assert (reported.status, reported.detail) == ("done", "state re-published")
    wait_for(
        lambda: (fleet.store.get_device(DEVICE).reported_at or 0) > before.reported_at,
        30,
        "a fresh state report",
    )

    renewed = send(fleet, "renew_cert")
    assert renewed.status == "done" and "certificate renewed" in renewed.detail, renewed
    after = fleet.store.get_device(DEVICE)
    assert after.cert_serial != before.cert_serial
    assert (after.cert_not_after or 0) >= (before.cert_not_after or 0)
    # The device reconnected with the new certificate: it still answers.
    wait_for(lambda: fleet.store.get_device(DEVICE).online, 60, "back online")
    assert send(fleet, "ping").status == "done"


def test_the_server_resends_desired_state_to_a_device_behind_it(
    fleet: FleetServer, agent: Path
) -> None:
    """The twin says version 1 (never sent); the next state report shows the device at 0,
    so the server's reconciler sends ``set_desired`` itself, and the device applies it."""
    fleet.store.set_desired(DEVICE, DesiredState(version=1, config={"telemetry_interval_s": 2}))
    assert send(fleet, "report_state").status == "done"

    def resent() -> list[CommandRecord]:
        return [c for c in fleet.store.list_commands(DEVICE) if c.actor == "reconciler"]

    wait_for(lambda: any(c.status == "done" for c in resent()), 60, "the re-sent desired state")
    assert len(resent()) == 1 and resent()[0].name == "set_desired"
    assert resent()[0].args["version"] == 1
    wait_for(
        lambda: fleet.store.get_device(DEVICE).reported.desired_version == 1,  # type: ignore[union-attr]
        60,
        "the device at desired version 1",
    )


def test_the_daemon_renews_its_certificate_by_itself_when_due(
    fleet: FleetServer, tmp_path: Path
) -> None:
    """The server's enrollment clock runs five days behind while the device enrolls, so its
    seven-day certificate is past the 2/3 mark at once; the daemon's own renewal loop (no
    command) renews it, and the device stays connected with the new certificate."""
    real = fleet.enrollment._clock
    fleet.enrollment._clock = lambda: time.time() - 5 * 86400
    try:
        with running_agent(fleet, tmp_path, EDGE_AGENT_RENEW_CHECK_S="0.5"):
            first = fleet.store.get_device(DEVICE).cert_serial
            fleet.enrollment._clock = real  # the renewed certificate is fresh: renewed once
            wait_for(
                lambda: fleet.store.get_device(DEVICE).cert_serial not in (None, first),
                60,
                "a certificate renewed by the daemon",
            )
            wait_for(lambda: fleet.store.get_device(DEVICE).online, 60, "back online")
            assert send(fleet, "ping").status == "done"
            assert not any(c.name == "renew_cert" for c in fleet.store.list_commands(DEVICE))
    finally:
        fleet.enrollment._clock = real
