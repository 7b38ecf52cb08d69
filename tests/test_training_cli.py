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


START_FOR_NOBODY = ["train", "start", "--model", "digits", "--target", "tag:fl=nobody"]
"""A run that no device is eligible for: the server checks and keeps its spec, nobody trains."""


def test_train_start_strategy_options_reach_the_run_spec(fleet: FleetServer) -> None:
    login_admin(fleet.settings.api_url)
    code, out, err = fleetctl(["--json", *START_FOR_NOBODY])
    assert code == 0, err
    run = json.loads(out)
    assert run["spec"]["strategy"] == "fedadam" and run["spec"]["server_lr"] is None  # defaults
    assert run["spec"]["parent_version"] == "1.0.0"  # what it started from, recorded
    assert fleetctl(["train", "stop", run["id"]])[0] == 0
    code, out, err = fleetctl([*START_FOR_NOBODY, "--from-version", "9.9.9"])
    assert code == 1 and "no trainable package of model 'digits' version 9.9.9" in err, err
    code, out, err = fleetctl([*START_FOR_NOBODY, "--from-version", "1.0.0"])
    assert code == 0 and "from digits 1.0.0" in out, err
    assert fleetctl(["train", "stop", out.split()[2]])[0] == 0
    code, out, err = fleetctl(
        [
            "--json", *START_FOR_NOBODY,
            "--strategy", "fedbuff", "--buffer-size", "3", "--max-staleness", "4",
            "--min-clients", "2", "--concurrency", "6", "--server-lr", "0.5",
        ]
    )  # fmt: skip
    assert code == 0, err
    spec = json.loads(out)["spec"]
    assert (spec["strategy"], spec["buffer_size"], spec["max_staleness"]) == ("fedbuff", 3, 4)
    assert (spec["concurrency"], spec["server_lr"]) == (6, 0.5)
    assert fleetctl(["train", "stop", json.loads(out)["id"]])[0] == 0
    code, out, err = fleetctl(
        [*START_FOR_NOBODY, "--over-select", "0.3", "--round-deadline", "500"]
    )
    assert code == 1 and "round_deadline_s must not exceed round_timeout_s" in err, err
    fedyogi = ["--strategy", "fedyogi", "--over-select", "0.3", "--round-deadline", "30"]
    code, out, err = fleetctl(["--json", *START_FOR_NOBODY, *fedyogi])
    assert code == 0, err
    spec = json.loads(out)["spec"]
    assert (spec["strategy"], spec["over_select"], spec["round_deadline_s"]) == ("fedyogi", 0.3, 30)
    assert fleetctl(["train", "stop", json.loads(out)["id"]])[0] == 0
    code, out, err = fleetctl([*START_FOR_NOBODY, "--strategy", "fedbuff", "--evaluate-every", "2"])
    assert code == 1 and "federated evaluation runs with synchronous" in err, err


def test_train_federated_evaluation_every_k_rounds_by_cohort(
    fleet: FleetServer, tmp_path: Path
) -> None:
    write_start_package(fleet.settings.data_dir / "models")
    login_admin(fleet.settings.api_url)
    fleet.training.build_candidates = False
    made = devices(fleet, tmp_path / "devs", 3, "ce")
    for d, site in zip(made, ["north", "north", "south"], strict=True):
        fleet.store.update_device(d.link.device_id, tags={"fl": "yes", "site": site})
    try:
        code, out, err = fleetctl(
            [
                "--json", "train", "start", "--model", MODEL, "--target", "tag:fl=yes",
                "--strategy", "fedavg", "--rounds", "3", "--min-clients", "3",
                "--evaluate-every", "2", "--evaluate-by", "site", "--accept-by", "federated",
            ]
        )  # fmt: skip
        assert code == 0, err
        run = json.loads(out)
        assert run["spec"]["client_evaluate"] is True and run["spec"]["evaluate_every"] == 2
        code, out, err = fleetctl(["train", "status", run["id"], "--watch", "--interval", "0.2"])
        assert code == 0, err
        assert "BY COHORT" in out and "north" in out and "south" in out
        assert "federated judging: accepted" in out, out
        code, out, _ = fleetctl(["--json", "train", "status", run["id"]])
        rounds = json.loads(out)["rounds"]
        assert [bool(r["evaluation"].get("devices")) for r in rounds] == [False, True, True]
        assert rounds[0]["evaluation"]["parent"]["cohorts"]["north"]["devices"] == 2
    finally:
        for d in made:
            d.stop()
