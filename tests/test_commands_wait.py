"""``fleetctl commands send --wait`` returns the device's answer, and a command the device
has not declared (``rebot``) is refused before it is sent, naming the close match."""

from __future__ import annotations

import json
from pathlib import Path

from agent.commands import Outcome
from fleet_server.server import FleetServer

from .fleetctl_kit import fleetctl, login_admin
from .harness import answering_device


def test_send_waits_for_the_answer_and_unknown_commands_are_refused(
    fleet: FleetServer, fleetctl_config: Path, tmp_path: Path
) -> None:
    login_admin(fleet.settings.api_url)
    assert fleetctl(["devices", "add", "cmd-1"])[0] == 0
    handlers = {
        "reboot": lambda c: Outcome(True, "rebooting in 5 s"),
        "crash": lambda c: Outcome(False, "cannot crash on purpose"),
    }
    with answering_device(
        fleet, tmp_path / "cmd-1", "cmd-1", handlers, features=("predict", "runtime:onnx")
    ):
        code, out, err = fleetctl(["commands", "send", "cmd-1", "reboot", "--wait"])
        assert code == 0, err
        assert "cmd-1 answered reboot" in out and "done: rebooting in 5 s" in out
        code, out, _ = fleetctl(["commands", "send", "cmd-1", "crash", "--wait", "-o", "json"])
        assert code == 1 and json.loads(out)["status"] == "failed"

        code, _, err = fleetctl(["commands", "send", "cmd-1", "rebot"])
        assert code == 1
        assert "cmd-1 does not know the command 'rebot'; did you mean 'reboot'?" in err
        assert "runtime:onnx" not in err  # features are not offered as commands
        listed = fleet.store.list_commands("cmd-1")
        assert "rebot" not in [c.name for c in listed]  # refused before it was sent


def test_wait_gives_up_on_a_silent_device(fleet: FleetServer, fleetctl_config: Path) -> None:
    login_admin(fleet.settings.api_url)
    assert fleetctl(["devices", "add", "cmd-quiet"])[0] == 0  # never connects, never reports
    code, _, err = fleetctl(["commands", "send", "cmd-quiet", "ping", "--wait", "--timeout", "1"])
    assert code == 1 and "no answer from cmd-quiet within 1 s" in err
