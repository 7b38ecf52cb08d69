"""``twin set`` is checked before anything is stored or sent (config keys and types against
the device settings schema, model and firmware against the registry), and a device's
refusal is shown by ``twin show`` instead of hiding behind "pending"."""

from __future__ import annotations

import json
from pathlib import Path

from agent.commands import Outcome
from fleet_server.server import FleetServer

from .fleetctl_kit import fleetctl, login_admin
from .harness import answering_device, wait_for

DIST = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models"


def test_bad_desired_states_are_refused_before_they_are_sent(
    fleet: FleetServer, fleetctl_config: Path
) -> None:
    login_admin(fleet.settings.api_url)
    assert fleetctl(["devices", "add", "tv-1"])[0] == 0
    refused = {
        ("--config", "telemetry_interval_s=fast"): "config telemetry_interval_s='fast': "
        "Input should be a valid number",
        ("--config", "telemetry_interval_s=0"): "greater than or equal to 0.05",
        ("--config", "telemtry_interval_s=5"): "config key 'telemtry_interval_s' is not a "
        "device setting; did you mean 'telemetry_interval_s'?",
        ("--model", "digits@9.9.9"): "model digits@9.9.9 is not registered (registered "
        "versions of digits: none)",
        ("--firmware", "edge-os@3.0.0"): "firmware edge-os@3.0.0 is not registered",
        ("--firmware", "firm:/x@1"): "'firm:/x' cannot be part of a TUF target path",
    }
    for args, message in refused.items():
        code, _, err = fleetctl(["twin", "set", "tv-1", *args])
        assert code == 1 and message in err, (args, err)
    assert fleet.store.get_device("tv-1").desired is None  # nothing was stored
    assert fleet.store.list_commands("tv-1") == []  # nor sent

    assert fleetctl(["models", "push", str(DIST / "digits-1.0.0-onnx-int8.efpkg")])[0] == 0
    code, _, err = fleetctl(["twin", "set", "tv-1", "--model", "digits@9.9.9"])
    assert "registered versions of digits: 1.0.0" in err
    code, _, err = fleetctl(["twin", "set", "tv-1", "--model", "digits@1.0.0"])
    assert code == 0, err


def test_the_device_refusal_is_shown_by_twin_show(
    fleet: FleetServer, fleetctl_config: Path, tmp_path: Path
) -> None:
    login_admin(fleet.settings.api_url)
    assert fleetctl(["devices", "add", "tv-2"])[0] == 0
    refuse = {"set_desired": lambda c: Outcome(False, "storage is read-only")}
    with answering_device(fleet, tmp_path / "tv-2", "tv-2", refuse):
        code, _, err = fleetctl(["twin", "set", "tv-2", "--config", "telemetry_interval_s=5"])
        assert code == 0, err
        wait_for(
            lambda: fleet.store.list_commands("tv-2")[0].status == "failed", what="the refusal"
        )
        code, out, _ = fleetctl(["twin", "show", "tv-2"])
        assert "tv-2: pending" in out
        assert "REFUSED by the device (v1): failed: storage is read-only" in out
        code, out, _ = fleetctl(["twin", "show", "tv-2", "-o", "json"])
        assert json.loads(out)["refusal"] == "failed: storage is read-only"
