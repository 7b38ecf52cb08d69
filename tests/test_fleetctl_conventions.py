"""fleetctl's conventions: output flags anywhere, tables fitted to the terminal and plain in
a pipe, rounded figures, help with an example everywhere, --version, completion (with
device ids from the server), explicit login state, clear wrong-URL errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from fleet_server.fleetctl import output
from fleet_server.fleetctl.cli import cli, register_commands
from fleet_server.fleetctl.conventions import walk
from fleet_server.fleetctl.examples import EXAMPLES
from fleet_server.server import FleetServer

from .fleetctl_kit import fleetctl, login_admin

BIN = Path(sys.executable).parent


def _commands() -> list[tuple[str, click.Command]]:
    register_commands(cli)
    return list(walk(cli))


def test_every_command_has_a_description_and_an_example() -> None:
    commands = _commands()
    assert len(commands) > 40
    for path, command in commands:
        short = command.get_short_help_str(200)
        assert short and not short.endswith(("e.g.", "e.g")), f"{path}: no description"
        assert path in EXAMPLES, f"{path}: add an example to fleetctl/examples.py"
        assert EXAMPLES[path].startswith(f"fleetctl {path}"), path
    code, out, _ = fleetctl(["rollout", "create", "--help"])
    assert code == 0 and "Example:\n    fleetctl rollout create --artifact digits@1.3.0" in out


def test_version_and_completion_scripts() -> None:
    code, out, _ = fleetctl(["--version"])
    assert code == 0 and out.startswith("fleetctl, version ")
    for shell, needle in (("bash", "complete -o"), ("zsh", "compdef"), ("fish", "complete")):
        code, out, err = fleetctl(["completion", shell])
        assert code == 0, err
        assert "_FLEETCTL_COMPLETE" in out and needle in out
    code, _, err = fleetctl(["completion", "tcsh"])
    assert code == 2 and "tcsh" in err


def test_not_logged_in_is_said_and_no_server_is_guessed(fleetctl_config: Path) -> None:
    code, _, err = fleetctl(["devices", "list"])
    assert code == 1 and "not logged in" in err and "fleetctl login --server" in err
    code, _, err = fleetctl(["login", "-u", "admin", "--password-stdin"], "x\n")
    assert code == 2 and "--server" in err
    code, out, _ = fleetctl(["logout"])
    assert code == 0 and "not logged in" in out


def test_a_server_url_with_an_api_path_is_refused(fleetctl_config: Path) -> None:
    code, _, err = fleetctl(
        ["login", "--server", "http://127.0.0.1:9/api/v1", "-u", "a", "--password-stdin"], "x\n"
    )
    assert code == 2 and "--server http://127.0.0.1:9" in err
    code, _, err = fleetctl(["login", "--server", "fleet.example", "-u", "a", "--password-stdin"])
    assert code == 2 and "is not a URL" in err


def test_tables_fit_the_terminal_and_figures_are_rounded() -> None:
    rows = [{"id": "cam-0001", "state": "active", "accuracy": 0.973456, "tags": {"site": "b"}}]
    columns = [("id", "ID"), ("state", "STATE"), ("accuracy", "ACCURACY"), ("tags", "TAGS")]
    piped = output.render_table(rows, columns, width=None)
    assert piped.splitlines()[0].split() == ["ID", "STATE", "ACCURACY", "TAGS"]
    assert piped.splitlines()[1].split() == ["cam-0001", "active", "0.973", "site=b"]
    assert "│" not in piped and "┃" not in piped  # no box characters
    narrow = output.render_table(rows, columns, width=22).splitlines()
    assert narrow[0].split() == ["ID", "STATE"]
    assert narrow[-1] == "(ACCURACY, TAGS left out to fit the terminal; -o wide shows them)"
    assert all(len(line) <= 22 for line in narrow[:2])
    assert output.number(12345.678) == "12,346" and output.number(2.5) == "2.5"
    assert output.number(3.0) == "3" and output.number(-0.0001) == "0"


def test_output_flags_anywhere(fleet: FleetServer, fleetctl_config: Path) -> None:
    login_admin(fleet.settings.api_url)
    assert fleetctl(["devices", "add", "conv-1", "--tag", "site=berlin"])[0] == 0
    as_json = [
        ["--json", "devices", "list"],
        ["devices", "list", "--json"],
        ["devices", "--json", "list"],
        ["devices", "list", "-o", "json"],
        ["-ojson", "devices", "list"],
        ["devices", "list", "--output=json"],
    ]
    for args in as_json:
        code, out, err = fleetctl(args)
        assert code == 0, (args, err)
        assert [d["id"] for d in json.loads(out)["items"]] == ["conv-1"], args
    code, out, _ = fleetctl(["devices", "show", "conv-1", "-o", "yaml"])
    assert code == 0 and yaml.safe_load(out)["tags"] == {"site": "berlin"}
    code, out, _ = fleetctl(["devices", "show", "conv-1"])
    assert "CREATED AT" not in out
    code, out, _ = fleetctl(["devices", "show", "conv-1", "-o", "wide"])
    assert code == 0 and "CREATED AT" in out  # every field, not only the default columns
    code, _, err = fleetctl(["devices", "list", "-o", "xml"])
    assert code == 2 and "table, wide, json, yaml" in err

    # Answering "no" to a confirmation is a choice, not an error.
    code, out, _ = fleetctl(["devices", "revoke", "conv-1"], "n\n")
    assert code == 0 and "conv-1 not revoked" in out

    code, out, _ = fleetctl(["whoami", "-o", "json"])
    assert json.loads(out)["server"] == fleet.settings.api_url

    # Completion asks the logged-in server for device ids.
    env = {
        **os.environ,
        "FLEETCTL_CONFIG": str(fleetctl_config),
        "_FLEETCTL_COMPLETE": "bash_complete",
        "COMP_WORDS": "fleetctl devices show conv",
        "COMP_CWORD": "3",
    }
    done = subprocess.run(
        [str(BIN / "fleetctl")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "plain,conv-1" in done.stdout.splitlines()


def test_a_server_url_with_a_wrong_path_names_the_url(
    fleet: FleetServer, fleetctl_config: Path
) -> None:
    wrong = fleet.settings.api_url + "/fleet"
    code, _, err = fleetctl(["login", "--server", wrong, "-u", "admin", "--password-stdin"], "x\n")
    assert code == 1
    assert f"{wrong}/api/v1/auth/login is not an edgefleet API route" in err
    assert "base address" in err


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_machine_formats_round_trip(fmt: str) -> None:
    output.set_format(fmt)
    try:
        text = output.dump({"a": 1.5, "b": [1, 2]})
    finally:
        output.set_format("table")
    loaded = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    assert loaded == {"a": 1.5, "b": [1, 2]}


def test_every_list_has_one_envelope(fleet: FleetServer) -> None:
    import httpx

    from .harness import admin_token

    api = fleet.settings.api_url
    headers = {"Authorization": f"Bearer {admin_token(api)}"}
    httpx.post(f"{api}/api/v1/devices", headers=headers, json={"id": "env-1"}).raise_for_status()
    lists = [
        "/devices",
        "/devices/env-1/commands",
        "/rollouts",
        "/training/runs",
        "/users",
        "/tokens",
        "/audit",
        "/artifacts",
    ]
    for path in lists:
        r = httpx.get(f"{api}/api/v1{path}", headers=headers)
        assert r.status_code == 200, (path, r.text)
        body = r.json()
        assert isinstance(body, dict) and {"items", "total"} <= set(body), path
        assert isinstance(body["items"], list) and body["total"] >= len(body["items"]), path
