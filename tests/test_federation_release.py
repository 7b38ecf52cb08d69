"""From training run to release: ``--rollout`` ships the winning candidate through OTA.

The end-to-end test runs five real ``edge-agent`` processes (enrolled for real,
so they trust the server's TUF root) through a short FedAvg run; the server
registers and signs the candidate, starts the rollout the run asked for, and
the participants install the new version from ``/tuf/`` and commit it.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from edgefleet_contract.errors import PlanError
from edgefleet_contract.package import read_package
from fleet_server.federation.packages import DIST
from fleet_server.federation.release import for_participants, participants_selector, release_plan
from fleet_server.rollouts.artifacts import ResolvedArtifact
from fleet_server.rollouts.plan import PlanSpec, build_plan
from fleet_server.server import FleetServer

from .fl_helpers import (
    MODEL,
    Rest,
    committed,
    learning_agents,
    release_spec,
    write_start_package,
)
from .harness import admin_token, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
AGENTS = 5
TRAINED = DIST / "digits-1.0.0-onnx-float32.efpkg"
CANDIDATE = ResolvedArtifact("model", "digits", "1.1.0", "models/digits/1.1.0/x.efpkg", "a" * 64, 9)


def parse_rollout_option(text: str, target: str) -> PlanSpec:
    return PlanSpec.parse(text, target=target)


def test_the_rollout_option_reads_like_the_rollout_command() -> None:
    body = parse_rollout_option(
        "canary 1; waves 25% 50% 100%; pace 100/min; probation 30s; "
        "gate accuracy >= 0.9, gate error_rate<0.01, no-auto-rollback",
        "tag:site=berlin",
    )
    assert (body.canary, body.waves, body.pace, body.probation) == (
        "1",
        "25%,50%,100%",
        "100/min",
        "30s",
    )
    assert body.gates == ["accuracy>=0.9", "error_rate<0.01"] and not body.auto_rollback
    assert parse_rollout_option("canary 10%, waves 50%,100%", "all").waves == "50%,100%"
    quiet = parse_rollout_option("gate error_rate<0.1, gates-allow-no-data", "all")
    assert quiet.gates_allow_no_data and quiet.gate_min_samples == 20
    strict = parse_rollout_option("gate accuracy>=0.9; gate-min-samples 50; gate-timeout 1h", "all")
    assert (strict.gate_min_samples, strict.gate_timeout) == (50, "1h")
    assert not strict.gates_allow_no_data
    plan = build_plan(strict, CANDIDATE, 1)
    assert (plan.gate_min_samples, plan.gate_timeout_s, plan.gates_allow_no_data) == (
        50,
        3600.0,
        False,
    )
    assert (plan.vs_parent, plan.parent_margin, plan.parent_confidence) == (True, 0.05, 0.95)
    tight = build_plan(
        parse_rollout_option("parent-margin 2pt parent-confidence 99%", "all"), CANDIDATE, 1
    )
    assert (tight.parent_margin, tight.parent_confidence) == (0.02, 0.99)
    assert not build_plan(parse_rollout_option("no-parent-gate", "all"), CANDIDATE, 1).vs_parent


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("", "empty"),
        ("10%", "expected one of canary"),
        ("canary", "'canary' needs a value"),
        ("canary 1 canary 2", "given twice"),
        ("canary 1 2", "takes one value"),
        ("waves 50 100", "percentages"),
        ("gate acc>1", "expected a metric"),
        ("probation soon", "duration"),
        ("max-failures many", "whole number"),
        ("no-auto-rollback yes", "takes no value"),
        ("gate-min-samples 0", "gate-min-samples is from 1 to 1000000, not '0'"),
        ("gate-min-samples few", "gate-min-samples is a whole number, not 'few'"),
        ("gate-timeout later", "--gate-timeout 'later': use a duration"),
        ("gates-allow-no-data please", "gates-allow-no-data takes no value"),
        ("gate-timeout 1m gate-timeout 2m", "given twice"),
        ("parent-margin 2", "--parent-margin '2': use accuracy points"),
        ("parent-confidence 0.95", "--parent-confidence '0.95': use a percentage"),
        ("no-parent-gate now", "no-parent-gate takes no value"),
    ],
)
def test_a_bad_rollout_option_says_what_is_wrong(option: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        parse_rollout_option(option, "all")


def test_the_plan_targets_the_participants_within_the_runs_selector() -> None:
    asked = parse_rollout_option("canary 1, waves 100%", "tag:fl=x")
    plan = release_plan(for_participants(asked, ["b", "a"]), CANDIDATE, seed=1)
    assert plan is not None and plan.selector == "(tag:fl=x) and (id:a or id:b)"
    assert plan.artifact == CANDIDATE and plan.canary.count == 1
    assert release_plan(for_participants(None, ["b", "a"]), CANDIDATE, seed=1) is None
    many = [f"device-{i:05d}" for i in range(2000)]
    assert participants_selector("tag:fl=x", many) == "tag:fl=x"


def test_train_start_refuses_a_bad_rollout_option_at_once(fleet: FleetServer) -> None:
    api = fleet.settings.api_url
    token = admin_token(api)
    r = httpx.post(
        f"{api}/api/v1/training/runs",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": "digits", "target": "all", "rollout": "canary 10%, waves 50 100"},
    )
    assert r.status_code == 422, r.text
    assert "percentages" in r.text
    assert fleet.store.list_training_runs(limit=10) == []  # type: ignore[attr-defined]


def test_a_winning_candidate_is_rolled_out_to_the_participants(
    fleet: FleetServer, tmp_path: Path
) -> None:
    write_start_package(fleet.settings.data_dir / "models")
    api = fleet.settings.api_url
    token = admin_token(api)
    rest = Rest(api, token)
    ids = [f"rel-{i}" for i in range(AGENTS)]
    env = {"EDGE_AGENT_LOCAL_API__PORT": "0", "EDGE_AGENT_UPDATES__PROBATION_S": "1"}
    with learning_agents(fleet, token, ids, tmp_path, seed=3, env=env):
        spec = release_spec("tag:fl=proc", AGENTS)
        r = rest.post("/training/runs", spec.model_dump(mode="json"))
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]
        final = rest.finished_run(run_id, 300)
        assert final["status"] == "completed", final
        result = final["result"]
        assert result["handed_over"] is True, result
        version = result["version"]

        rollouts = rest.get("/rollouts")["items"]
        assert len(rollouts) == 1, rollouts
        rollout = rollouts[0]
        assert rollout["artifact"].startswith(f"{MODEL}@{version}")
        assert rollout["created_by"] == f"federation:{run_id}"
        assert rollout["devices"] == AGENTS and "id:rel-0" in rollout["target"]

        done = rest.finished_rollout(rollout["id"], 300)
        assert done["status"] == "completed", (done["reason"], done["devices_detail"])
        wait_for(
            lambda: all(committed(fleet, d, MODEL, version) for d in ids),
            120,
            "participants committed",
        )
        listed = rest.get("/artifacts")["items"]
        mine = [a for a in listed if a["name"] == MODEL and a["version"] == version]
        assert len(mine) == 4 and all(a["lineage"]["run_id"] == run_id for a in mine), mine


def _finish(fleet: FleetServer, parent: Path, weights_from: Path) -> dict[str, object]:
    """finish_run over the server's own hand-over hook: ``parent``'s run ended with the
    weights of ``weights_from``; the participant ``cand-0`` exists in the fleet."""
    from fleet_server.federation.candidate import HeldOutSet, finish_run
    from fleet_server.modelkit.digits import split
    from fleet_server.modelkit.network import Network
    from fleet_server.store.training import RoundRecord

    data = split()
    fleet.store.create_device("cand-0", name="cand-0", tags={"fl": "cand"}, now=1.0)
    fleet.store.add_certificate("cand-0", 4242, not_after=4e9, now=1.0)  # enrolled
    spec = release_spec("tag:fl=cand", 1)
    record = RoundRecord("run-c", 1, None, None, ["cand-0"], {}, {}, 0, 0, 0.0, 1.0)
    return finish_run(
        "run-c",
        spec,
        read_package(parent),
        Network.from_package(read_package(weights_from)),
        lambda _: HeldOutSet(data.x_test, data.y_test, data.x_train[:300]),
        rounds=[record],
        out_dir=fleet.settings.data_dir / "candidates" / "run-c",
        on_candidate=fleet.training.on_candidate,
    )


def test_a_candidate_that_loses_to_its_parent_is_neither_registered_nor_rolled_out(
    fleet: FleetServer, tmp_path: Path
) -> None:
    """The trained reference model as parent, an untrained network as the run's result:
    the candidate is built and scored, but the registry and the rollouts never see it."""
    write_start_package(tmp_path / "start")
    untrained = tmp_path / "start" / f"{MODEL}-1.0.0-onnx-float32.efpkg"
    result = _finish(fleet, TRAINED, untrained)
    assert result["beats_parent"] is False and result["handed_over"] is False, result
    assert str(result["refused"]).startswith("candidate not registered: held-out accuracy")
    assert float(result["accuracy"]) < float(result["baseline_accuracy"]) - 0.3  # type: ignore[arg-type]
    assert all(Path(str(f)).is_file() for f in result["files"])  # type: ignore[attr-defined]
    rest = Rest(fleet.settings.api_url, admin_token(fleet.settings.api_url))
    assert rest.get("/artifacts")["items"] == []
    assert rest.get("/rollouts")["items"] == []


def test_a_candidate_that_beats_its_parent_is_registered_and_rolled_out(
    fleet: FleetServer, tmp_path: Path
) -> None:
    """The positive control of the test above: the same path, the roles swapped."""
    write_start_package(tmp_path / "start")
    untrained = tmp_path / "start" / f"{MODEL}-1.0.0-onnx-float32.efpkg"
    result = _finish(fleet, untrained, TRAINED)
    assert result["beats_parent"] is True and result["handed_over"] is True, result
    rest = Rest(fleet.settings.api_url, admin_token(fleet.settings.api_url))
    versions = {(a["name"], a["version"]) for a in rest.get("/artifacts")["items"]}
    assert (MODEL, result["version"]) in versions
    rollouts = rest.get("/rollouts")["items"]
    assert len(rollouts) == 1 and rollouts[0]["created_by"] == "federation:run-c", rollouts
