"""The REST API on a real store and CA: authentication, roles, audit, problem details."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgefleet_contract.messages import Command
from fleet_server.api import ApiContext, create_app
from fleet_server.auth import hash_password
from fleet_server.config import ApiSettings, ServerSettings
from fleet_server.enrollment import Enrollment
from fleet_server.pki import FleetCA
from fleet_server.store import open_store
from fleet_server.store.base import Store


class Outbox:
    """Stands in for the MQTT link (the end-to-end tests use the real one)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Command]] = []

    def send_command(self, device_id: str, command: Command) -> None:
        self.sent.append((device_id, command))


@pytest.fixture
def env(tmp_path: Path) -> tuple[TestClient, Store, Outbox]:
    store = open_store(tmp_path / "fleet.db")
    ca = FleetCA.create(tmp_path / "ca", now=time.time())
    settings = ServerSettings(data_dir=tmp_path, api=ApiSettings(login_attempts_per_minute=3))
    for name, role in (("alice", "admin"), ("olga", "operator"), ("vic", "viewer")):
        store.create_user(
            name, role=role, password_hash=hash_password(f"{name}-password"), now=time.time()
        )
    outbox = Outbox()
    ctx = ApiContext(
        settings=settings,
        store=store,
        commands=outbox,
        enrollment=Enrollment(store, ca, token_ttl_s=600, cert_validity_s=3600),
    )
    return TestClient(create_app(ctx)), store, outbox


def login(client: TestClient, user: str) -> dict[str, str]:
    r = client.post("/api/v1/auth/login", json={"username": user, "password": f"{user}-password"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def test_unauthenticated_is_401_problem(env: tuple[TestClient, Store, Outbox]) -> None:
    client, _, _ = env
    r = client.get("/api/v1/devices")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"] == "Bearer"
    assert "fleetctl login" in r.json()["detail"]
    r = client.get("/api/v1/devices", headers={"Authorization": "Bearer eft_forged"})
    assert r.status_code == 401


def test_roles_are_enforced_and_audited(env: tuple[TestClient, Store, Outbox]) -> None:
    client, _, outbox = env
    viewer, operator, admin = login(client, "vic"), login(client, "olga"), login(client, "alice")
    r = client.post("/api/v1/devices", headers=viewer, json={"id": "d1"})
    assert r.status_code == 403 and "operator role" in r.json()["detail"]
    r = client.post("/api/v1/devices", headers=operator, json={"id": "d1", "tags": {"a": "b"}})
    assert r.status_code == 201 and r.json()["token"].startswith("d1.")
    assert client.get("/api/v1/devices", headers=viewer).json()["total"] == 1
    r = client.put(
        "/api/v1/devices/d1/twin/desired",
        headers=operator,
        json={"config": {"telemetry_interval_s": 5}},
    )
    assert r.status_code == 200 and r.json()["status"] == "pending"
    assert outbox.sent[-1][0] == "d1" and outbox.sent[-1][1].name == "set_desired"
    assert client.get("/api/v1/audit", headers=operator).status_code == 403
    entries = client.get("/api/v1/audit", headers=admin).json()["items"]
    seen = {(e["actor"], e["action"], e["outcome"]) for e in entries}
    assert ("vic", "create_device", "denied") in seen
    assert ("olga", "create_device", "ok") in seen
    assert ("olga", "set_desired", "ok") in seen
    assert ("vic", "login", "ok") in seen
    assert all("password" not in str(e["detail"]) for e in entries)


def test_token_revocation_is_immediate(env: tuple[TestClient, Store, Outbox]) -> None:
    client, _, _ = env
    admin = login(client, "alice")
    assert client.get("/api/v1/auth/me", headers=admin).json() == {
        "username": "alice",
        "role": "admin",
    }
    tokens = client.get("/api/v1/tokens", headers=admin).json()
    assert all("token_hash" not in t for t in tokens)
    assert client.delete(f"/api/v1/tokens/{tokens[-1]['id']}", headers=admin).status_code == 204
    assert client.get("/api/v1/auth/me", headers=admin).status_code == 401


def test_login_is_rate_limited(env: tuple[TestClient, Store, Outbox]) -> None:
    client, _, _ = env
    for _ in range(3):
        r = client.post("/api/v1/auth/login", json={"username": "alice", "password": "wrong-pw"})
        assert r.status_code == 401 and r.json()["detail"] == "wrong username or password"
    r = client.post("/api/v1/auth/login", json={"username": "alice", "password": "alice-password"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_validation_errors_name_the_field(env: tuple[TestClient, Store, Outbox]) -> None:
    client, _, _ = env
    operator = login(client, "olga")
    r = client.post("/api/v1/devices", headers=operator, json={"id": "bad/id#"})
    assert r.status_code == 422
    body = r.json()
    assert body["errors"][0]["field"] == "body.id" and "pattern" in body["detail"]
    assert client.get("/api/v1/devices/nope", headers=operator).status_code == 404
    r = client.post("/api/v1/devices", headers=operator, json={"id": "dup"})
    r = client.post("/api/v1/devices", headers=operator, json={"id": "dup"})
    assert r.status_code == 409 and "already exists" in r.json()["detail"]


def test_selector_filter_and_telemetry_queries(env: tuple[TestClient, Store, Outbox]) -> None:
    from edgefleet_contract.messages import InferenceStats, Telemetry

    client, store, _ = env
    operator = login(client, "olga")
    for i, site in enumerate(["berlin", "berlin", "paris"]):
        client.post(
            "/api/v1/devices", headers=operator, json={"id": f"t{i}", "tags": {"site": site}}
        )
    store.insert_telemetry(
        [
            Telemetry(
                device_id=f"t{i}",
                batch_id=f"b{n}",
                seq=n,
                ts=6000.0 + n * 10,
                window_s=10,
                inference=InferenceStats(
                    model="m", version="1", count=10, errors=i, throughput_per_s=1
                ),
            )
            for i in range(3)
            for n in range(3)
        ],
        received_at=7000,
    )
    r = client.get("/api/v1/devices", headers=operator, params={"selector": "tag:site=berlin"})
    assert [d["id"] for d in r.json()["items"]] == ["t0", "t1"] and r.json()["total"] == 2
    r = client.get("/api/v1/devices", headers=operator, params={"selector": "tag:site=berlin and"})
    assert r.status_code == 422 and "column" in r.json()["detail"]
    raw = client.get(
        "/api/v1/devices/t1/telemetry",
        headers=operator,
        params={"since": 0, "until": 10_000, "resolution": "raw"},
    ).json()
    assert [b["batch_id"] for b in raw["raw"]] == ["b0", "b1", "b2"]
    minute = client.get(
        "/api/v1/devices/t1/telemetry", headers=operator, params={"since": 0, "until": 10_000}
    ).json()["rollups"]
    assert minute == [pytest.approx(minute[0])] and minute[0]["inferences"] == 30
    agg = client.get(
        "/api/v1/telemetry/aggregate",
        headers=operator,
        params={"selector": "tag:site=berlin", "since": 0, "until": 10_000},
    ).json()
    row = agg["rollups"][0]
    assert row["devices"] == 2 and row["inferences"] == 60 and row["errors"] == 3
    assert row["error_rate"] == pytest.approx(0.05)
    bad = client.get(
        "/api/v1/devices/t1/telemetry", headers=operator, params={"since": 10, "until": 5}
    )
    assert bad.status_code == 400 and "before" in bad.json()["detail"]


def test_console_session_cookie_with_csrf(env: tuple[TestClient, Store, Outbox]) -> None:
    client, _, _ = env
    r = client.post(
        "/api/v1/auth/login",
        json={"username": "olga", "password": "olga-password", "session": True},
    )
    assert r.status_code == 200 and r.json()["token"] is None
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    csrf = r.json()["csrf_token"]
    assert client.get("/api/v1/auth/me").json()["username"] == "olga"  # cookie alone reads
    r = client.post("/api/v1/devices", json={"id": "c1"})
    assert r.status_code == 403 and "X-CSRF-Token" in r.json()["detail"]
    r = client.post("/api/v1/devices", json={"id": "c1"}, headers={"X-CSRF-Token": "0" * 32})
    assert r.status_code == 403
    r = client.post("/api/v1/devices", json={"id": "c1"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201
    assert client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert client.get("/api/v1/auth/me").status_code == 401
