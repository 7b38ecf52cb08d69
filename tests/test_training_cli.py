"""``fleetctl train`` against a real fleet server with devices running the agent's learning code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet_server.server import FleetServer

from .fl_helpers import MODEL, write_start_package
from .fleetctl_kit import fleetctl, login_admin
from .test_federation_e2e import devices

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("fleetctl_config"),
]


def test_train_start_watch_list_stop(fleet: FleetServer, tmp_path: Path) -> None:
    write_start_package(fleet.settings.data_dir / "models")
    api = fleet.settings.api_url
    login_admin(api)
    fleet.training.build_candidates = False
    made = devices(fleet, tmp_path / "devs", 3, "cl")
    try:
        code, out, err = fleetctl(
            [
                "--json",
                "train",
                "start",
                "--model",
                MODEL,
                "--target",
                "tag:fl=yes",
                "--rounds",
                "3",
                "--strategy",
                "fedprox",
                "--mu",
                "0.01",
                "--min-clients",
                "3",
            ]
        )
        assert code == 0, err
        run = json.loads(out)
        assert run["spec"]["strategy"] == "fedprox" and run["spec"]["local"]["proximal_mu"] == 0.01
        code, out, err = fleetctl(["train", "status", run["id"], "--watch", "--interval", "0.2"])
        assert code == 0, err
        assert "completed" in out and "ACCURACY" in out
        code, out, _ = fleetctl(["--json", "train", "status", run["id"]])
        status = json.loads(out)
        assert [r["round"] for r in status["rounds"]] == [1, 2, 3]
        assert all(len(r["participants"]) == 3 and r["bytes_in"] > 0 for r in status["rounds"])
        code, out, _ = fleetctl(["--json", "train", "list"])
        assert run["id"] in [r["id"] for r in json.loads(out)["items"]]

        code, out, err = fleetctl(["train", "start", "--model", MODEL, "--target", "tag:("])
        assert code == 1 and "selector" in err and "Traceback" not in err
        code, out, err = fleetctl(["train", "start", "--model", "no-such-model"])
        assert code == 1 and "no trainable package" in err

        # Nobody is eligible: the run waits for its quorum until an operator stops it.
        code, out, err = fleetctl(
            ["--json", "train", "start", "--model", MODEL, "--target", "tag:fl=never"]
        )
        assert code == 0, err
        waiting = json.loads(out)["id"]
        code, out, err = fleetctl(["train", "stop", waiting])
        assert code == 0 and "stopped" in out, err
        code, out, err = fleetctl(["train", "stop", waiting])
        assert code == 1 and "already stopped" in err
    finally:
        for d in made:
            d.stop()
