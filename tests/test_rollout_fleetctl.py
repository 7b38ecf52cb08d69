"""``fleetctl rollout`` against a real fleet server: create, status, control, clear errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fleet_server.server import FleetServer

from .fleetctl_kit import fleetctl, login_admin
from .ota_server import model_version

pytestmark = pytest.mark.usefixtures("fleetctl_config")


def test_rollout_commands(fleet: FleetServer, tmp_path: Path) -> None:
    fleet.artifacts.add_model(model_version(tmp_path, "2.0.0"), lineage={}, actor="test")
    now = time.time()
    for i in range(4):
        d = f"ctl-r{i}"
        fleet.store.create_device(d, name=d, tags={"site": "lab"}, now=now)
        fleet.store.add_certificate(d, 900 + i, now + 3600, now)
    login_admin(fleet.settings.api_url)
    base = ["rollout", "create", "--artifact", "digits@2.0.0", "--target", "tag:site=lab"]
    code, out, err = fleetctl([*base, "--gate", "error_rate<"])
    assert code == 1 and "expected a number at column 12, found the end" in err
    assert "Traceback" not in err
    code, out, err = fleetctl([*base, "--waves", "50%"])
    assert code == 1 and "--waves must end at 100%" in err
    code, out, err = fleetctl([*base, "--gate-min-samples", "0"])
    assert code == 2 and "--gate-min-samples" in err and "Traceback" not in err
    code, out, err = fleetctl([*base, "--gate-timeout", "soon"])
    assert code == 1 and "--gate-timeout 'soon': use a duration" in err
    code, out, err = fleetctl([*base, "--parent-margin", "0.05"])
    assert code == 1 and "--parent-margin '0.05': use accuracy points" in err
    code, out, err = fleetctl([*base, "--parent-confidence", "100%"])
    assert code == 1 and "--parent-confidence '100%'" in err
    code, out, err = fleetctl([*base, "--shadow", "soon"])
    assert code == 1 and "--shadow 'soon': use a duration" in err
    code, out, err = fleetctl([*base, "--gate", "shadow_agreement>=0.9"])
    assert code == 1 and "needs a shadow step: add --shadow" in err
    code, out, err = fleetctl(["rollout", "create", "--artifact", "nope@1", "--target", "all"])
    assert code == 1 and "no such artifact 'nope@1'" in err

    code, out, err = fleetctl(
        [
            *base,
            "--canary",
            "25%",
            "--waves",
            "50%,100%",
            "--pace",
            "1/min",
            "--probation",
            "1s",
            "--gate",
            "error_rate<0.01",
            "--seed",
            "4",
            # These devices never come online, let alone serve: say so in the plan.
            "--gates-allow-no-data",
            "--gate-min-samples",
            "5",
            "--gate-timeout",
            "2m",
        ]
    )
    assert code == 0, err
    assert "to 4 devices (canary 1, wave 1 1, wave 2 2)" in out
    rid = out.split()[1].rstrip(":")
    code, out, _ = fleetctl(["--json", "rollout", "list"])
    assert code == 0 and [r["id"] for r in json.loads(out)["items"]] == [rid]
    code, out, _ = fleetctl(["rollout", "status", rid])
    assert code == 0 and rid in out and "canary" in out and "wave 2" in out
    assert "gates: a gate with no data passes (--gates-allow-no-data)" in out
    assert "against the parent: no worse by 5 points at 95%" in out
    assert "started" in out
    code, out, _ = fleetctl(["rollout", "pause", rid])
    assert code == 0 and out.strip() == f"rollout {rid}: paused"
    code, out, err = fleetctl(["rollout", "pause", rid])
    assert code == 1 and "only a running rollout can pause" in err
    code, out, _ = fleetctl(["rollout", "resume", rid])
    assert code == 0 and "canary" in out
    code, out, _ = fleetctl(["--json", "rollout", "rollback", rid])
    assert code == 0 and json.loads(out)["status"] == "rolled_back"  # nobody is online
    code, out, _ = fleetctl(["rollout", "status", rid, "--watch", "--interval", "0.1"])
    assert code == 1 and "rolled_back" in out
    code, out, _ = fleetctl(["--json", "rollout", "status", rid])
    detail = json.loads(out)
    assert detail["plan"]["gates"] == ["error_rate<0.01"] and detail["plan"]["seed"] == 4
    assert detail["plan"]["gates_allow_no_data"] is True
    assert (detail["plan"]["gate_min_samples"], detail["plan"]["gate_timeout_s"]) == (5, 120.0)
    assert detail["plan"]["vs_parent"] is True and detail["plan"]["parent_margin"] == 0.05
