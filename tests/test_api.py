"""The REST API on a real store and CA: authentication, roles, audit, problem details."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from edgefleet_contract.messages import Command, DesiredState, ModelRef, ReportedState
from fleet_server.api import create_app
from fleet_server.auth import hash_password
from fleet_server.config import ApiSettings
from fleet_server.store import open_store
from fleet_server.store.base import Store
from fleet_server.twin import target_ref, twin_status

from .api_kit import Outbox, api_context, audit_log, login, store_with_users
from .harness import nth_batch


@pytest.fixture
def env(tmp_path: Path) -> tuple[TestClient, Store, Outbox]:
    store = store_with_users(tmp_path)
    outbox = Outbox()
    ctx = api_context(
        tmp_path,
        store,
        api=ApiSettings(login_attempts_per_minute=3),
        commands=outbox,
    )
    return TestClient(create_app(ctx)), store, outbox


def test_unauthenticated_is_401_problem(env: tuple[TestClient, Store, Outbox]) -> None:
    client, _, _ = env
    r = client.get("/api/v1/devices")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")
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
    entries, seen = audit_log(client, admin)
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
    tokens = client.get("/api/v1/tokens", headers=admin).json()["items"]
    assert all("token_hash" not in t for t in tokens)
    assert client.delete(f"/api/v1/tokens/{tokens[-1]['id']}", headers=admin).status_code == 204
    assert client.get("/api/v1/auth/me", headers=admin).status_code == 401


def test_login_is_rate_limited_and_failures_audited(
    env: tuple[TestClient, Store, Outbox],
) -> None:
    client, store, _ = env
    for _ in range(3):
        r = client.post("/api/v1/auth/login", json={"username": "alice", "password": "wrong-pw"})
        assert r.status_code == 401 and r.json()["detail"] == "wrong username or password"
    r = client.post("/api/v1/auth/login", json={"username": "alice", "password": "alice-password"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert r.headers["content-type"] == "application/problem+json"
    # Another user from the same address is refused too: the source address is the key.
    r = client.post("/api/v1/auth/login", json={"username": "olga", "password": "olga-password"})
    assert r.status_code == 429
    entries = store.list_audit(limit=10).items
    assert [(e.actor, e.action, e.outcome, e.detail["status"]) for e in entries[::-1]] == [
        ("alice", "login", "denied", 401)
    ] * 3 + [("alice", "login", "denied", 429), ("olga", "login", "denied", 429)]
    assert "wrong-pw" not in repr(entries)


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
    from edgefleet_contract.messages import InferenceStats

    client, store, _ = env
    operator = login(client, "olga")
    for i, site in enumerate(["berlin", "berlin", "paris"]):
        client.post(
            "/api/v1/devices", headers=operator, json={"id": f"t{i}", "tags": {"site": site}}
        )
    store.insert_telemetry(
        [
            nth_batch(
                f"t{i}",
                n,
                6000.0 + n * 10,
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


def _csr(key: ec.EllipticCurvePrivateKey, cn: str) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_enrollment_renewal_and_revocation_through_the_api(
    env: tuple[TestClient, Store, Outbox],
) -> None:
    client, store, _ = env
    operator, admin = login(client, "olga"), login(client, "alice")
    token = client.post("/api/v1/devices", headers=operator, json={"id": "e1"}).json()["token"]
    key = ec.generate_private_key(ec.SECP256R1())
    r = client.post("/api/v1/enroll", json={"token": token, "csr_pem": _csr(key, "e1")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["device_id"], body["broker_host"], body["broker_port"]) == (
        "e1",
        "127.0.0.1",
        8883,
    )
    cert = x509.load_pem_x509_certificate(body["cert_pem"].encode())
    ca = x509.load_pem_x509_certificate(body["ca_pem"].encode())
    cert.verify_directly_issued_by(ca)  # really signed by the fleet CA
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "e1"
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    assert store.get_device("e1").state == "enrolled"

    again = client.post("/api/v1/enroll", json={"token": token, "csr_pem": _csr(key, "e1")})
    assert again.status_code == 403 and again.headers["content-type"] == "application/problem+json"

    new_key = ec.generate_private_key(ec.SECP256R1())
    csr = _csr(new_key, "e1")
    proof = base64.b64encode(key.sign(csr.encode(), ec.ECDSA(hashes.SHA256()))).decode()
    renew = {"cert_pem": body["cert_pem"], "csr_pem": csr, "signature_b64": proof}
    forged = base64.b64encode(new_key.sign(csr.encode(), ec.ECDSA(hashes.SHA256()))).decode()
    r = client.post("/api/v1/enroll/renew", json={**renew, "signature_b64": forged})
    assert r.status_code == 403 and "current key" in r.json()["detail"]
    r = client.post("/api/v1/enroll/renew", json=renew)
    assert r.status_code == 200 and r.json()["cert_pem"] != body["cert_pem"]

    assert client.post("/api/v1/devices/e1/revoke", headers=operator).json()["state"] == "revoked"
    assert client.post("/api/v1/enroll/renew", json=renew).status_code == 403
    r = client.post("/api/v1/devices/e1/token", headers=operator)
    assert r.status_code == 403 and "revoked" in r.json()["detail"]

    audit, seen = audit_log(client, admin, limit=1000)
    assert ("device:e1", "enroll", "ok") in seen and ("device:e1", "renew", "ok") in seen
    assert ("anonymous", "enroll", "denied") in seen and ("olga", "revoke", "ok") in seen
    assert token not in repr(audit) and proof not in repr(audit)


def test_every_mutating_request_is_audited_once(env: tuple[TestClient, Store, Outbox]) -> None:
    client, store, _ = env
    operator = login(client, "olga")
    calls = [
        ("POST", "/api/v1/devices", {"id": "a1", "tags": {"site": "x"}}),
        ("PATCH", "/api/v1/devices/a1", {"groups": ["canary"]}),
        ("POST", "/api/v1/devices/a1/token", None),
        ("PUT", "/api/v1/devices/a1/twin/desired", {"config": {"telemetry_interval_s": 1}}),
        ("POST", "/api/v1/devices/a1/commands", {"name": "reboot"}),
        ("POST", "/api/v1/devices/missing/commands", {"name": "reboot"}),
        ("POST", "/api/v1/tokens", {"name": "ci"}),
        ("POST", "/api/v1/users", {"username": "x", "role": "admin", "password": "p" * 8}),
    ]
    before = store.list_audit(limit=1).total
    for method, path, body in calls:
        client.request(method, path, headers=operator, json=body)
    entries = store.list_audit(limit=len(calls)).items[::-1]
    assert store.list_audit(limit=1).total - before == len(calls)
    assert [e.outcome for e in entries] == ["ok"] * 5 + ["failed", "ok", "denied"]
    assert [e.detail["status"] for e in entries][-3:] == [404, 201, 403]
    assert entries[1].target == "device:a1" and entries[1].role == "operator"
    assert all(e.source_ip == "testclient" and e.detail["request_id"] for e in entries)
    assert client.get("/api/v1/devices", headers=operator).status_code == 200
    assert store.list_audit(limit=1).total - before == len(calls)  # reads are not audited


def test_users_tokens_and_the_last_admin(env: tuple[TestClient, Store, Outbox]) -> None:
    client, _, _ = env
    admin, viewer = login(client, "alice"), login(client, "vic")
    assert client.get("/api/v1/users", headers=viewer).status_code == 403
    new = {"username": "pat", "role": "operator", "password": "pat-password"}
    assert client.post("/api/v1/users", headers=admin, json=new).status_code == 201
    assert client.post("/api/v1/users", headers=admin, json=new).status_code == 409
    pat = login(client, "pat")
    assert client.get("/api/v1/auth/me", headers=pat).json()["role"] == "operator"
    r = client.patch("/api/v1/users/pat", headers=admin, json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True
    assert client.get("/api/v1/auth/me", headers=pat).status_code == 401  # at once

    r = client.patch("/api/v1/users/alice", headers=admin, json={"role": "viewer"})
    assert r.status_code == 409 and "last enabled admin" in r.json()["detail"]
    client.patch("/api/v1/users/vic", headers=admin, json={"role": "admin"})
    assert client.patch("/api/v1/users/alice", headers=admin, json={"role": "operator"}).is_success

    r = client.post("/api/v1/tokens", headers=viewer, json={"name": "ci job", "ttl_s": 3600})
    assert r.status_code == 201 and r.json()["role"] == "admin"  # vic was promoted
    ci = {"Authorization": f"Bearer {r.json()['token']}"}
    assert client.get("/api/v1/auth/me", headers=ci).json()["username"] == "vic"
    mine = client.get("/api/v1/tokens", headers=admin).json()["items"]
    assert {t["username"] for t in mine} == {"alice"}  # alice is no admin any more: own only
    r = client.delete(f"/api/v1/tokens/{r.json()['token_id']}", headers=admin)
    assert r.status_code == 404  # not hers, and she cannot learn whether it exists
    everyone = client.get("/api/v1/tokens", headers=ci).json()["items"]
    assert {"alice", "vic", "pat"} <= {t["username"] for t in everyone}


def test_unexpected_failure_is_500_without_internals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def send_command(self, device_id: str, command: Command) -> None:
            raise RuntimeError("internal detail at /srv/secret/path")

    store = open_store(tmp_path / "fleet.db")
    store.create_user("op", role="operator", password_hash=hash_password("op-password"), now=0)
    store.create_device("d", name="d", tags={}, now=0)
    ctx = api_context(tmp_path, store, token_ttl_s=60, commands=Broken())
    client = TestClient(create_app(ctx), raise_server_exceptions=False)
    headers = {
        "Authorization": "Bearer "
        + client.post(
            "/api/v1/auth/login", json={"username": "op", "password": "op-password"}
        ).json()["token"]
    }
    with caplog.at_level(logging.ERROR):
        r = client.post("/api/v1/devices/d/commands", headers=headers, json={"name": "reboot"})
    assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json"
    assert "secret" not in r.text and "Traceback" not in r.text
    request_id = r.json()["request_id"]
    assert r.headers["x-request-id"] == request_id and request_id in r.json()["detail"]
    assert request_id in caplog.text
    last = store.list_audit(limit=1).items[0]
    assert (last.action, last.outcome, last.detail["request_id"]) == (
        "send_command",
        "error",
        request_id,
    )


def test_twin_desired_state_commands_and_no_broker(
    env: tuple[TestClient, Store, Outbox], tmp_path: Path
) -> None:
    client, store, outbox = env
    operator = login(client, "olga")
    client.post("/api/v1/devices", headers=operator, json={"id": "w1"})
    r = client.put(
        "/api/v1/devices/w1/twin/desired",
        headers=operator,
        json={
            "model": {"name": "digits", "version": "1.2.0"},
            "config": {"telemetry_interval_s": 5},
        },
    )
    assert r.status_code == 200, r.text
    desired = r.json()["desired"]
    assert desired["version"] == 1 and desired["model"]["target"] == "models/digits/1.2.0"
    assert r.json()["status"] == "pending"
    sent = outbox.sent[-1][1]
    assert sent.name == "set_desired" and DesiredState.model_validate(sent.args).version == 1
    r = client.put(
        "/api/v1/devices/w1/twin/desired",
        headers=operator,
        json={"model": {"name": "digits", "version": "2.0", "target": "bad target!"}},
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.model.target"
    reported = ReportedState(
        device_id="w1",
        ts=1,
        agent_version="1",
        desired_version=1,
        model=ModelRef(name="digits", version="1.2.0", sha256="0" * 64, runtime="onnx"),
    )
    store.set_reported("w1", reported, 1)
    assert client.get("/api/v1/devices/w1/twin", headers=operator).json()["status"] == "in_sync"

    r = client.post(
        "/api/v1/devices/w1/commands", headers=operator, json={"name": "reboot", "args": {"s": 1}}
    )
    assert r.status_code == 202 and outbox.sent[-1][1].id == r.json()["id"]
    listed = client.get("/api/v1/devices/w1/commands", headers=operator).json()["items"]
    assert listed[0]["id"] == r.json()["id"] and listed[0]["actor"] == "olga"

    client.app.state.ctx.commands = None  # type: ignore[attr-defined]
    r = client.post("/api/v1/devices/w1/commands", headers=operator, json={"name": "reboot"})
    assert r.status_code == 503 and "broker" in r.json()["detail"]
    r = client.put("/api/v1/devices/w1/twin/desired", headers=operator, json={"config": {}})
    assert r.status_code == 200 and r.json()["desired"]["version"] == 2  # stored for later


def test_twin_status_is_a_pure_function() -> None:
    model = target_ref("model", "m", "1.0")
    desired = DesiredState(version=3, model=model)
    ref = ModelRef(name="m", version="1.0", sha256="0" * 64, runtime="onnx")

    def reported(applied: int, version: str = "1.0") -> ReportedState:
        return ReportedState(
            device_id="x",
            ts=1,
            agent_version="1",
            desired_version=applied,
            model=ref.model_copy(update={"version": version}),
        )

    assert twin_status(None, reported(0)) == "no_desired"
    assert twin_status(desired, None) == "pending"
    assert twin_status(desired, reported(2)) == "pending"
    assert twin_status(desired, reported(3)) == "in_sync"
    assert twin_status(desired, reported(3, "0.9")) == "drifted"


def test_tags_groups_and_telemetry_steps_are_validated(
    env: tuple[TestClient, Store, Outbox],
) -> None:
    from edgefleet_contract.messages import InferenceStats

    client, store, _ = env
    operator = login(client, "olga")
    r = client.post("/api/v1/devices", headers=operator, json={"id": "s1", "tags": {"a b": "c"}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"].startswith("body.tags")
    client.post("/api/v1/devices", headers=operator, json={"id": "s1"})
    r = client.patch("/api/v1/devices/s1", headers=operator, json={"groups": ["has space"]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.groups.0"
    store.insert_telemetry(
        [
            nth_batch(
                "s1",
                n,
                6000.0 + 60 * n,
                window_s=10,
                inference=InferenceStats(
                    model="m", version="1", count=10, errors=n, throughput_per_s=1
                ),
            )
            for n in range(4)
        ],
        received_at=7000,
    )
    params = {"selector": "id:s1", "since": 0, "until": 10_000}
    minutes = client.get("/api/v1/telemetry/aggregate", headers=operator, params=params).json()
    assert [row["errors"] for row in minutes["rollups"]] == [0, 1, 2, 3]
    wide = client.get(
        "/api/v1/telemetry/aggregate", headers=operator, params={**params, "step": 600}
    ).json()
    assert wide["step"] == 600 and [(r["minute"], r["inferences"]) for r in wide["rollups"]] == [
        (6000.0, 40)
    ]
    assert wide["rollups"][0]["error_rate"] == pytest.approx(6 / 40)
    r = client.get("/api/v1/telemetry/aggregate", headers=operator, params={**params, "step": 90})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.step"
    deep: dict[str, object] = {"x": 1}
    for _ in range(10):
        deep = {"x": deep}
    for args, field in (({"a b": 1}, "body.args.a b.[key]"), (deep, "body.args")):
        r = client.post(
            "/api/v1/devices/s1/commands", headers=operator, json={"name": "go", "args": args}
        )
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == field, r.text
    r = client.post(
        "/api/v1/devices/s1/commands",
        headers={**operator, "Content-Type": "application/json"},
        content=b" " * (2 * 1024 * 1024),
    )
    assert r.status_code == 413 and "limited" in r.json()["detail"]


def test_health_and_metrics_need_no_login(env: tuple[TestClient, Store, Outbox]) -> None:
    client, _, _ = env
    assert client.get("/healthz").json() == {"status": "ok"}
    client.app.state.ctx.metrics = lambda: "edgefleet_up 1\n"  # type: ignore[attr-defined]
    r = client.get("/metrics")
    assert r.status_code == 200 and r.text == "edgefleet_up 1\n"
    assert client.get("/api/v1/openapi.json").json()["info"]["title"] == "edgefleet fleet server"
