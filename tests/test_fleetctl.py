"""fleetctl against a real fleet server: login, tables and --json, errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

from fleet_server.server import FleetServer

from .fleetctl_kit import fleetctl, login_admin
from .harness import ADMIN_PASSWORD


def test_operator_workflow(fleet: FleetServer, fleetctl_config: Path) -> None:
    api = fleet.settings.api_url
    code, out, err = fleetctl(
        ["login", "--server", api, "-u", "admin", "--password-stdin"], ADMIN_PASSWORD + "\n"
    )
    assert code == 0, err
    assert fleetctl_config.stat().st_mode & 0o077 == 0
    assert "token" in json.loads(fleetctl_config.read_text())
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


def test_twin_users_tokens_and_plain_errors(fleet: FleetServer, fleetctl_config: Path) -> None:
    api = fleet.settings.api_url
    code, _, err = fleetctl(["login", "--server", api, "-u", "admin", "--password-stdin"], "bad\n")
    assert code == 1 and "wrong username or password" in err and "Traceback" not in err
    login_admin(api)
    fleetctl(["devices", "add", "tw-1"])

    package = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models"
    assert fleetctl(["models", "push", str(package / "digits-1.0.0-onnx-int8.efpkg")])[0] == 0
    code, out, err = fleetctl(
        ["twin", "set", "tw-1", "--model", "digits@1.0.0", "--config", "telemetry_interval_s=5"]
    )
    assert code == 0, err
    assert "tw-1: desired v1, pending" in out
    code, out, _ = fleetctl(["twin", "set", "tw-1", "--config", "telemetry_interval_s=2.5"])
    assert code == 0 and "desired v2" in out
    code, out, _ = fleetctl(["--json", "twin", "show", "tw-1"])
    desired = json.loads(out)["desired"]
    assert desired["model"]["name"] == "digits"
    assert desired["config"] == {"telemetry_interval_s": 2.5}
    code, out, _ = fleetctl(["twin", "set", "tw-1", "--config", "telemetry_interval_s="])
    assert code == 0 and "desired v3" in out
    code, out, _ = fleetctl(["twin", "show", "tw-1"])
    assert code == 0 and "digits@1.0.0" in out
    code, _, err = fleetctl(["twin", "set", "tw-1", "--model", "digits"])
    assert code == 2 and "NAME@VERSION" in err

    code, out, err = fleetctl(
        ["users", "add", "viv", "--role", "viewer", "--password-stdin"], "viv-password\n"
    )
    assert code == 0, err
    code, out, _ = fleetctl(["users", "list"])
    assert code == 0 and "viv" in out and "viewer" in out
    code, out, _ = fleetctl(["--json", "tokens", "create", "ci", "--ttl-days", "7"])
    created = json.loads(out)
    assert created["token"].startswith("eft_") and created["name"] == "ci"
    code, out, _ = fleetctl(["tokens", "list"])
    assert code == 0 and created["token_id"] in out and created["token"] not in out
    code, out, _ = fleetctl(["tokens", "revoke", created["token_id"]])
    assert code == 0 and "revoked" in out

    fleetctl_config.write_text(json.dumps({"server": api, "token": created["token"]}))
    code, _, err = fleetctl(["whoami"])
    assert code == 1 and "revoked" in err  # the revoked token stopped working at once

    fleetctl(["login", "--server", api, "-u", "viv", "--password-stdin"], "viv-password\n")
    code, _, err = fleetctl(["devices", "add", "nope-1"])
    assert code == 1 and "operator role" in err
    code, out, _ = fleetctl(["devices", "show", "tw-1"])
    assert code == 0 and "tw-1" in out and "pending" in out
