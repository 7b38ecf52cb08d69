"""The rollouts REST API on a real store: roles, validation (422 with the spot), audit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgefleet_contract.errors import EdgefleetError, NotFound
from fleet_server.api import create_app
from fleet_server.config import ApiSettings
from fleet_server.rollouts.driver import RolloutDriver
from fleet_server.store.base import Artifact, Store

from .api_kit import Outbox, api_context, audit_log, login, store_with_users
from .rollout_sim import ARTIFACT

Env = tuple[TestClient, Store, Outbox, RolloutDriver]


class TableRegistry:
    """The artifact registry's ``resolve``, over one registered model."""

    def resolve(self, spec: str) -> Artifact:
        if spec != ARTIFACT.label:
            raise NotFound(f"no artifact {spec!r}")
        a = ARTIFACT
        return Artifact(
            id=1,
            kind=a.kind,
            name=a.name,
            version=a.version,
            flavor="onnx-int8",
            runtime="onnx",
            hardware=(),
            sha256=a.sha256,
            size=a.length,
            filename=a.target_path.rsplit("/", 1)[-1],
            target_path=a.target_path,
            created_at=0.0,
            uploaded_by="test",
        )


def make_env(tmp_path: Path, *, registry: bool = True) -> Env:
    store = store_with_users(tmp_path)
    for i in range(8):
        d = f"cam-{i}"
        store.create_device(d, name=d, tags={"site": "berlin"}, now=time.time())
        store.add_certificate(d, serial=50 + i, not_after=time.time() + 1e6, now=time.time())
        store.set_presence(d, online=True, ts=time.time())
    outbox = Outbox()
    driver = RolloutDriver(store, outbox)
    ctx = api_context(
        tmp_path,
        store,
        api=ApiSettings(login_attempts_per_minute=30),
        commands=outbox,
        rollouts=driver,
    )
    if registry:
        ctx.artifacts = TableRegistry()  # type: ignore[assignment]
    return TestClient(create_app(ctx)), store, outbox, driver


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


BODY = {
    "artifact": "digits@1.3.0",
    "target": "tag:site=berlin",
    "canary": "25%",
    "waves": "50%,100%",
    "pace": "600/min",
    "jitter": "0s",
    "probation": "10m",
    "gates": ["error_rate<0.01", "p95_latency_ms<40"],
}


def test_create_get_list_and_control(env: Env) -> None:
    client, store, outbox, _ = env
    operator, viewer = login(client, "olga"), login(client, "vic")
    r = client.post("/api/v1/rollouts", headers=operator, json=BODY)
    assert r.status_code == 201, r.text
    out = r.json()
    rid = out["id"]
    assert out["status"] == "canary" and out["devices"] == 8
    assert [w["cumulative"] for w in out["waves"]] == [2, 4, 8]
    assert out["waves"][0]["name"] == "canary" and out["waves"][1]["state"] == "waiting"
    assert out["plan"]["gates"] == BODY["gates"]
    # Gates judged on 20 observations, waited for up to 30 min: the defaults, recorded.
    assert (out["plan"]["gate_min_samples"], out["plan"]["gate_timeout_s"]) == (20, 1800.0)
    assert out["plan"]["gates_allow_no_data"] is False
    # The canary went out through the twin path at once (pace 10/s, no jitter).
    sent = [d for d, c in outbox.sent if c.name == "set_desired"]
    assert len(sent) == 1
    assert outbox.sent[0][1].args["rollout_id"] == rid
    assert outbox.sent[0][1].args["model"]["target"].startswith("models/digits/1.3.0/")
    got = client.get(f"/api/v1/rollouts/{rid}", headers=viewer).json()
    assert got["waves"][0]["counts"] == {"sent": 1, "queued": 1}
    assert [e["kind"] for e in got["events"]][:2] == ["created", "started"]
    listed = client.get("/api/v1/rollouts", headers=viewer).json()
    assert [x["id"] for x in listed["items"]] == [rid] and listed["total"] == 1
    none = client.get("/api/v1/rollouts?status=completed", headers=viewer).json()
    assert none == {"items": [], "total": 0}

    assert client.post(f"/api/v1/rollouts/{rid}/pause", headers=viewer).status_code == 403
    r = client.post(f"/api/v1/rollouts/{rid}/pause", headers=operator)
    assert r.status_code == 200 and r.json()["status"] == "paused"
    r = client.post(f"/api/v1/rollouts/{rid}/pause", headers=operator)
    assert r.status_code == 409 and "only a running rollout can pause" in r.json()["detail"]
    assert client.post(f"/api/v1/rollouts/{rid}/resume", headers=operator).json()["status"] == (
        "canary"
    )
    r = client.post(f"/api/v1/rollouts/{rid}/rollback", headers=operator)
    assert r.status_code == 200 and r.json()["status"] in ("rolling_back", "rolled_back")
    ours = [(d, c.args) for d, c in outbox.sent if c.args.get("rollout_id") == rid]
    updated = sorted(d for d, args in ours if "model" in args)
    reverted = sorted(d for d, args in ours if "model" not in args)  # nothing ran before
    assert len(updated) == 2 and reverted == updated
    assert client.post(f"/api/v1/rollouts/{rid}/abort", headers=operator).status_code == 409

    admin = login(client, "alice")
    entries, seen = audit_log(client, admin)
    assert ("olga", "create_rollout", "ok") in seen
    assert ("vic", "pause_rollout", "denied") in seen
    assert ("olga", "pause_rollout", "failed") in seen
    assert ("olga", "rollback_rollout", "ok") in seen
    assert any(e["target"] == f"rollout:{rid}" for e in entries)
    assert store.get_rollout(rid).created_by == "olga"


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"canary": "lots"}, None, "--canary 'lots': use a device count (5) or a percentage"),
        ({"waves": "50%,20%,100%"}, None, "each must be larger than the one before"),
        ({"pace": "fast"}, None, "--pace 'fast'"),
        ({"probation": "a while"}, None, "--probation 'a while'"),
        ({"gates": ["error_rate <"]}, None, "expected a number at column 13, found the end"),
        ({"gates": ["latency<4"]}, None, "expected a metric"),
        ({"target": "tag:site=berlin and"}, None, "expected a condition"),
        ({"artifact": "digits@9.9.9"}, None, "no such artifact 'digits@9.9.9'"),
        ({"target": "tag:site=mars"}, None, "matches no free device"),
        ({"max_failures": -1}, "body.max_failures", "greater than or equal to 0"),
        ({"gate_min_samples": 0}, "body.gate_min_samples", "greater than or equal to 1"),
        ({"gate_min_samples": "many"}, "body.gate_min_samples", "valid integer"),
        ({"gate_timeout": "forever"}, None, "--gate-timeout 'forever': use a duration"),
        ({"gates_allow_no_data": "perhaps"}, "body.gates_allow_no_data", "valid boolean"),
    ],
)
def test_bad_plans_are_422_with_a_message(
    env: Env, change: dict[str, object], field: str | None, message: str
) -> None:
    client, _, _, _ = env
    r = client.post("/api/v1/rollouts", headers=login(client, "olga"), json={**BODY, **change})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert message in r.json()["detail"]
    if field:
        assert r.json()["errors"][0]["field"] == field


def test_without_a_registry_the_artifact_cannot_resolve(tmp_path: Path) -> None:
    client, _, _, _ = make_env(tmp_path, registry=False)
    r = client.post("/api/v1/rollouts", headers=login(client, "olga"), json=BODY)
    assert r.status_code == 422
    assert (
        "no such artifact 'digits@1.3.0': this server has no artifact registry"
        in (r.json()["detail"])
    )


def test_viewers_cannot_create_and_unknown_ids_are_404(env: Env) -> None:
    client, _, _, _ = env
    viewer = login(client, "vic")
    assert client.post("/api/v1/rollouts", headers=viewer, json=BODY).status_code == 403
    r = client.get("/api/v1/rollouts/r-nope", headers=viewer)
    assert r.status_code == 404 and "no rollout 'r-nope'" in r.json()["detail"]
    r = client.post("/api/v1/rollouts/r-nope/pause", headers=login(client, "olga"))
    assert r.status_code == 404


def test_a_registry_with_its_own_artifact_type_is_accepted(tmp_path: Path) -> None:
    from types import SimpleNamespace

    class Registry:
        def resolve(self, spec: str) -> SimpleNamespace:
            if ":" not in spec and spec.startswith("two"):
                raise EdgefleetError(
                    f"{spec} names 2 artifacts (model:onnx-int8, ...); add :flavor"
                )
            name, _, version = spec.partition("@")
            return SimpleNamespace(
                kind="model",
                name=name,
                version=version,
                target_path=f"models/{name}/{version}/{name}-{version}.efpkg",
                sha256="ab" * 32,
                size=10,
                lineage={"run": "fl-7"},
            )

    client, _, outbox, _ = make_env(tmp_path, registry=False)
    client.app.state.ctx.artifacts = Registry()  # type: ignore[attr-defined]
    r = client.post("/api/v1/rollouts", headers=login(client, "olga"), json=BODY)
    assert r.status_code == 201, r.text
    assert r.json()["plan"]["artifact"]["target_path"] == "models/digits/1.3.0/digits-1.3.0.efpkg"
    assert outbox.sent[0][1].args["model"]["version"] == "1.3.0"
    r = client.post(
        "/api/v1/rollouts",
        headers=login(client, "olga"),
        json={**BODY, "artifact": "two@1.0", "target": "all"},
    )
    assert r.status_code == 422 and "add :flavor" in r.json()["detail"]
