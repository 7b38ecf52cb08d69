"""fleetctl against a real fleet server: login, tables and --json, errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet_server.fleetctl.cli import main
from fleet_server.server import FleetServer

from .harness import ADMIN_PASSWORD


def fleetctl(args: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    runner = CliRunner()

    def entry() -> None:
        import sys

        sys.argv = ["fleetctl", *args]
        main()

    import click

    result = runner.invoke(click.Command("x", callback=entry), [], input=stdin)
    code = result.exit_code if isinstance(result.exit_code, int) else 1
    return code, result.stdout, result.stderr


@pytest.fixture(autouse=True)
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "fleetctl.json"
    monkeypatch.setenv("FLEETCTL_CONFIG", str(path))
    monkeypatch.delenv("FLEETCTL_TOKEN", raising=False)
    monkeypatch.delenv("FLEETCTL_SERVER", raising=False)
    return path


def test_operator_workflow(fleet: FleetServer, config: Path) -> None:
    api = fleet.settings.api_url
    code, out, err = fleetctl(
        ["login", "--server", api, "-u", "admin", "--password-stdin"], ADMIN_PASSWORD + "\n"
    )
    assert code == 0, err
    assert config.stat().st_mode & 0o077 == 0 and "token" in json.loads(config.read_text())
    code, out, _ = fleetctl(["devices", "add", "ctl-1", "--tag", "site=berlin"])
    assert code == 0 and "edge-agent enroll --server" in out and "ctl-1." in out
    fleetctl(["devices", "add", "ctl-2", "--tag", "site=paris"])
    code, out, _ = fleetctl(["--json", "devices", "list", "--selector", "tag:site=berlin"])
    assert code == 0 and [d["id"] for d in json.loads(out)["items"]] == ["ctl-1"]
    code, out, _ = fleetctl(["devices", "list"])
    assert code == 0 and "ctl-1" in out and "ctl-2" in out and "2 devices" in out
    code, out, _ = fleetctl(["--json", "devices", "groups", "ctl-1", "canary"])
    assert code == 0 and json.loads(out)["groups"] == ["canary"]
    code, out, _ = fleetctl(["--json", "telemetry", "aggregate", "--selector", "group:canary"])
    assert code == 0 and json.loads(out)["rollups"] == []
    code, out, _ = fleetctl(["--json", "audit", "--actor", "admin"])
    actions = {e["action"] for e in json.loads(out)["items"]}
    assert {"create_device", "patch_device"} <= actions
    code, _, err = fleetctl(["devices", "list", "--selector", "tag:site=berlin and"])
    assert code == 1 and "column" in err and "Traceback" not in err
    code, _, err = fleetctl(["devices", "show", "nope"])
    assert code == 1 and "no device 'nope'" in err
    assert fleetctl(["logout"])[0] == 0
    code, _, err = fleetctl(["whoami"])
    assert code == 1 and "fleetctl login" in err
