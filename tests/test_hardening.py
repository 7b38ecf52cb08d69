"""Regression tests for the security review of issue 19: each failed before its fix.

The API tests drive the real FastAPI app on a real store and CA; the body-limit
tests call it as an ASGI application with a ``receive`` that hands out a chunked
body lazily, so they can count how much of it the server actually pulled.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fleet_server.api import ApiContext, create_app
from fleet_server.auth import hash_password
from fleet_server.config import ApiSettings, ServerSettings
from fleet_server.store import open_store
from fleet_server.store.base import Store

from .api_kit import api_context, login, store_with_users

MiB = 1024 * 1024


@pytest.fixture
def api(tmp_path: Path) -> tuple[TestClient, Store, ApiContext]:
    store = store_with_users(tmp_path)
    ctx = api_context(tmp_path, store, api=ApiSettings(login_attempts_per_minute=3))
    return TestClient(create_app(ctx)), store, ctx


# ------------------------------------------------ 1. bounded request bodies --


def asgi_post(
    app: FastAPI, path: str, chunks: Iterator[bytes], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], int]:
    """POST a chunked body (no Content-Length) straight into the ASGI app.

    Returns the status, the JSON answer and how many body bytes the app pulled.
    """
    pulled = 0
    out: dict[str, Any] = {"status": 0, "body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *raw],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }

    async def run() -> None:
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)  # type: ignore[arg-type]

    asyncio.run(run())
    return int(out["status"]), json.loads(out["body"] or b"{}"), pulled


def _flood(total: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    yield b'{"username": "'
    for _ in range(total // chunk):
        yield b"a" * chunk


def test_a_chunked_body_is_bounded_without_content_length(
    api: tuple[TestClient, Store, ApiContext],
) -> None:
    client, _, _ = api
    app = client.app
    assert isinstance(app, FastAPI)
    status, body, pulled = asgi_post(app, "/api/v1/auth/login", _flood(64 * MiB))
    assert status == 413, body
    assert "limited to" in body["detail"]
    assert pulled <= MiB + 64 * 1024  # the limit plus at most one chunk, not 64 MiB


def test_the_body_of_an_unauthenticated_request_is_not_read(
    api: tuple[TestClient, Store, ApiContext],
) -> None:
    client, store, _ = api
    app = client.app
    assert isinstance(app, FastAPI)
    status, body, pulled = asgi_post(app, "/api/v1/devices", _flood(32 * MiB))
    assert status == 401, body  # not 422 after reading 32 MiB
    assert pulled == 0
    # and a forged token is refused the same way; the refusal is audited
    status, _, pulled = asgi_post(
        app, "/api/v1/devices", _flood(MiB), {"Authorization": "Bearer eft_forged"}
    )
    assert (status, pulled) == (401, 0)
    assert any(e.outcome == "denied" for e in store.list_audit().items)
    # an authenticated caller's small body is still read and parsed normally
    headers = login(client, "olga")
    r = client.post("/api/v1/devices", headers=headers, json={"id": "ok-1"})
    assert r.status_code == 201
    r = client.post("/api/v1/devices", headers=headers, content=b"{")
    assert r.status_code == 422


def test_only_the_listed_routes_take_a_body_from_anyone() -> None:
    """The guard authenticates every other body request first; keep its list honest."""
    from fastapi.routing import APIRoute

    from fleet_server.api import deps, routes_auth, routes_enroll
    from fleet_server.api.guard import PUBLIC_BODY_PATHS
    from fleet_server.console import routes as console_routes

    def uses_principal(dependant: Any) -> bool:
        return dependant.call is deps.principal or any(
            uses_principal(d) for d in dependant.dependencies
        )

    import fleet_server.api as api_pkg

    public: set[str] = set()
    modules = [getattr(api_pkg, n) for n in dir(api_pkg) if n.startswith("routes_")]
    for module in [*modules, console_routes, routes_auth, routes_enroll]:
        for attr in ("router", "admin"):
            router = getattr(module, attr, None)
            for route in getattr(router, "routes", ()):
                if not isinstance(route, APIRoute):
                    continue
                if (route.methods or set()) & {
                    "POST",
                    "PUT",
                    "PATCH",
                    "DELETE",
                } and not uses_principal(route.dependant):
                    public.add("/api/v1" + route.path)
    assert public == set(PUBLIC_BODY_PATHS)


# --------------------------------------------- 2. renewal supersedes the old --


def _csr(key: Any, cn: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _tls(folder: Path, name: str, cert_pem: str, key: Any, ca_file: Path) -> Any:
    from edgefleet_common.mqtt import TlsFiles
    from fleet_server.pki import key_pem, write_private

    (folder / f"{name}.crt").write_text(cert_pem)
    write_private(folder / f"{name}.key", key_pem(key))
    return TlsFiles(ca_file, folder / f"{name}.crt", folder / f"{name}.key")


def _mqtt_refused(port: int, tls: Any, client_id: str) -> bool:
    import ssl

    import paho.mqtt.client as paho

    from .harness import Client

    client = Client(tls, client_id)
    try:
        client.client.connect("127.0.0.1", port, keepalive=5)
    except (ssl.SSLError, OSError):
        return True
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if client.client.loop(0.1) != paho.MQTT_ERR_SUCCESS:
                return True
            if client.connack is not None:
                return client.connack != "Success"
        return True
    finally:
        client.client.disconnect()


def test_renewal_revokes_the_previous_certificate_on_the_real_broker(
    fleet: Any, tmp_path: Path
) -> None:
    import base64

    import httpx
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from .harness import admin_token, wait_for

    api = fleet.settings.api_url
    port = fleet.settings.broker.port
    headers = {"Authorization": f"Bearer {admin_token(api)}"}
    token = httpx.post(f"{api}/api/v1/devices", headers=headers, json={"id": "rot-1"}).json()[
        "token"
    ]
    old_key = ec.generate_private_key(ec.SECP256R1())
    first = httpx.post(
        f"{api}/api/v1/enroll", json={"token": token, "csr_pem": _csr(old_key, "rot-1")}
    )
    assert first.status_code == 200, first.text
    old = _tls(tmp_path, "old", first.json()["cert_pem"], old_key, fleet.ca.cert_file)
    assert not _mqtt_refused(port, old, "rot-1")

    def renew_with(cert_pem: str, key: Any) -> tuple[httpx.Response, Any]:
        new_key = ec.generate_private_key(ec.SECP256R1())
        csr = _csr(new_key, "rot-1")
        proof = base64.b64encode(key.sign(csr.encode(), ec.ECDSA(hashes.SHA256()))).decode()
        body = {"cert_pem": cert_pem, "csr_pem": csr, "signature_b64": proof}
        return httpx.post(f"{api}/api/v1/enroll/renew", json=body), new_key

    renewed, new_key = renew_with(first.json()["cert_pem"], old_key)
    assert renewed.status_code == 200, renewed.text
    new = _tls(tmp_path, "new", renewed.json()["cert_pem"], new_key, fleet.ca.cert_file)
    # The broker re-read the CRL: the superseded certificate no longer connects ...
    wait_for(lambda: _mqtt_refused(port, old, "rot-1"), timeout=30, what="old cert refused")
    assert not _mqtt_refused(port, new, "rot-1")
    # ... and it cannot renew again (no chain of certificates from one stolen key).
    again, _ = renew_with(first.json()["cert_pem"], old_key)
    assert again.status_code == 403 and "revoked" in again.json()["detail"]
    rows = fleet.store._conn().execute(
        "SELECT COUNT(*) FROM certificates WHERE device_id = 'rot-1' AND revoked_at IS NULL"
    )
    assert rows.fetchone()[0] == 1


# -------------------------------------- 3. public deltas never compute on request --


def _bundle(folder: Path, name: str, version: str, seed: int, size: int = 96 * 1024) -> Path:
    import hashlib

    from edgefleet_contract.firmware import write_bundle

    base = hashlib.shake_256(b"image").digest(size)
    image = bytearray(base)
    image[seed * 997 % size] ^= 0xFF  # versions differ a little: a patch is small
    path = folder / f"{name}-{version}.efbundle"
    write_bundle(path, {"name": name, "version": version, "hardware": ["x"]}, bytes(image))
    return path


def test_a_delta_request_never_computes_only_registration_does(tmp_path: Path) -> None:
    import hashlib

    from .ota_server import make_env

    env = make_env(tmp_path)
    operator = env.login("olga")

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    a = _bundle(tmp_path, "edge-os", "1.0.0", 1)
    other = _bundle(tmp_path, "other-os", "7.0.0", 2)  # another product: no delta made
    for path in (a, other):
        assert env.push("firmware", path, operator).status_code == 201
    deltas = env.client.app.state.ctx.deltas  # type: ignore[attr-defined]
    deltas.wait()
    r = env.client.get(f"/tuf/deltas/{sha(a)}/{sha(other)}")  # anyone may ask for any pair
    assert r.status_code == 404 and "download the full target" in r.json()["detail"]
    assert not list((env.data_dir / "deltas").glob(f"{sha(a)}-{sha(other)}.*"))  # nothing cached
    # The next version of the same product gets its patch when it is registered.
    b = _bundle(tmp_path, "edge-os", "1.1.0", 3)
    assert env.push("firmware", b, operator).status_code == 201
    deltas.wait()
    r = env.client.get(f"/tuf/deltas/{sha(a)}/{sha(b)}")
    assert r.status_code == 200 and len(r.content) < b.stat().st_size // 4


def test_delta_work_and_cache_are_bounded(tmp_path: Path) -> None:
    import hashlib
    import threading

    from fleet_server.registry import BlobStore, DeltaCache

    blobs = BlobStore(tmp_path / "blobs")
    shas = []
    for i in range(6):
        path = _bundle(tmp_path, "edge-os", f"1.{i}.0", i + 1)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        blobs.put(path, sha)
        shas.append(sha)
    target = shas[-1]
    cache = DeltaCache(blobs, tmp_path / "deltas", workers=1, max_pending=2)
    gate = threading.Lock()
    gate.acquire()
    cache._busy[(shas[0], target)] = gate  # the one worker blocks on the first pair
    try:
        assert cache.schedule(shas[:5], target) == 2  # one running, one waiting
        assert cache.dropped == 3
    finally:
        gate.release()
    cache.wait()
    one = cache.patch(shas[0], target)
    assert one is not None
    # the cache keeps at most max_bytes: the oldest patches go first
    small = DeltaCache(blobs, tmp_path / "small", max_bytes=one.stat().st_size * 2 + 10)
    for source in shas[:5]:
        small.compute(source, target)
    kept = list((tmp_path / "small").glob("*.bsdiff"))
    assert sum(p.stat().st_size for p in kept) <= small.max_bytes
    assert small.evicted >= 2 and len(kept) <= 2
    cache.close()
    small.close()


# ------------------------------------------------ 4. per-device ingest quotas --


def test_a_device_over_its_quota_is_refused_counted_and_reported(tmp_path: Path) -> None:
    from edgefleet_contract.codec import Codec
    from edgefleet_contract.messages import Telemetry
    from fleet_server.ingest import Inbound, Ingest
    from fleet_server.metrics import Metrics
    from fleet_server.quota import DeviceQuota, Rate

    store = open_store(tmp_path / "fleet.db")
    for d in ("q-1", "q-2"):
        store.create_device(d, name=d, tags={}, now=0)
    now = [1000.0]
    quota = DeviceQuota(Rate(1.0, 5), Rate(2000.0, 20_000), clock=lambda: now[0])
    registry = Metrics()
    acked: list[Inbound] = []
    ingest = Ingest(store, metrics=registry, quota=quota, acker=acked.append)

    def batch(device: str, n: int, pad: int = 0) -> Inbound:
        msg = Telemetry(
            device_id=device, batch_id=f"{device}-{n}", seq=n, ts=time.time(), window_s=1
        )
        payload = Codec().encode(msg)
        if pad:
            doc = json.loads(payload)
            doc["labels"] = {"pad": "x" * pad}
            payload = json.dumps(doc).encode()
        return Inbound(f"devices/{device}/telemetry", payload, time.time(), mid=n, qos=1)

    flood = [batch("q-1", n) for n in range(20)] + [batch("q-2", n) for n in range(3)]
    ingest.process(flood)
    stored = {d: len(store.query_raw(d, since=0, until=1e11)) for d in ("q-1", "q-2")}
    assert stored == {"q-1": 5, "q-2": 3}  # the noisy device does not spend the other's quota
    assert len(acked) == 23  # refused batches are acknowledged, not redelivered forever
    text = registry.render()
    assert 'edgefleet_ingest_rejected_total{reason="quota"} 15' in text
    # bytes: a batch bigger than what is left in the byte bucket is refused too
    now[0] += 100  # batches refill to the burst of 5; bytes to 20 kB
    ingest.process([batch("q-2", 100, pad=30_000)])
    assert len(store.query_raw("q-2", since=0, until=1e11)) == 3
    assert 'edgefleet_ingest_rejected_total{reason="quota"} 16' in registry.render()


def test_the_server_applies_a_default_quota() -> None:
    from fleet_server.server import telemetry_quota

    quota = telemetry_quota(ServerSettings())
    # above what an agent drains at (50 batches/s) yet far below a flood
    assert 50 < quota.batches.per_s < 1000 and quota.size.burst < 64 * MiB


# -------------------------------------------------- 5. selector nesting depth --


@pytest.mark.parametrize(
    "selector", ["(" * 330 + "online" + ")" * 330, "not " * 400 + "online", "(not " * 200 + "all"]
)
def test_deep_selectors_are_a_422_without_a_traceback(
    api: tuple[TestClient, Store, ApiContext], selector: str, caplog: pytest.LogCaptureFixture
) -> None:
    client, _, _ = api
    headers = login(client, "vic")
    with caplog.at_level("INFO"):
        r = client.get("/api/v1/devices", headers=headers, params={"selector": selector})
    assert r.status_code == 422, r.text
    assert "at most 32 levels" in r.json()["detail"]
    assert not [rec for rec in caplog.records if rec.exc_info or rec.levelname == "ERROR"]
    # 32 levels still parse
    fine = "(" * 32 + "online" + ")" * 32
    assert client.get("/api/v1/devices", headers=headers, params={"selector": fine}).is_success


# ------------------------------------- 6. throttling slows the source, not the user --


def test_wrong_passwords_from_one_address_do_not_lock_the_account_elsewhere(
    api: tuple[TestClient, Store, ApiContext],
) -> None:
    from fleet_server.auth import LoginThrottle

    client, _, _ = api
    attacker = TestClient(client.app, client=("203.0.113.9", 40000))
    admin = TestClient(client.app, client=("192.0.2.10", 40001))
    for _ in range(11):
        attacker.post("/api/v1/auth/login", json={"username": "alice", "password": "guess-123"})
    r = attacker.post("/api/v1/auth/login", json={"username": "alice", "password": "guess-456"})
    assert r.status_code == 429
    # the real admin, from her own address, is not locked out
    r = admin.post("/api/v1/auth/login", json={"username": "alice", "password": "alice-password"})
    assert r.status_code == 200, r.text

    # and a source that keeps failing waits longer each time (backoff)
    now = [0.0]
    throttle = LoginThrottle(3, window_s=60, max_wait_s=900, clock=lambda: now[0])
    waits = []
    for _ in range(6):
        for _ in range(3):
            throttle.failed("ip:203.0.113.9")
        waits.append(throttle.retry_after("ip:203.0.113.9"))
        now[0] += waits[-1]
    assert waits == [60, 120, 240, 480, 900, 900]
    assert throttle.retry_after("ip:192.0.2.10") == 0


# -------------------------------------------- 7. sessions end, lifetimes bounded --


def test_reset_disable_and_change_end_every_session_and_token(
    api: tuple[TestClient, Store, ApiContext],
) -> None:
    client, _, _ = api
    admin = login(client, "alice")

    def sessions_of(user: str) -> tuple[dict[str, str], dict[str, str], TestClient]:
        """A fleetctl token, a token minted from a console session, and the console cookie."""
        cli = login(client, user)
        browser = TestClient(client.app)
        r = browser.post(
            "/api/v1/auth/login",
            json={"username": user, "password": f"{user}-password", "session": True},
        )
        assert r.status_code == 200
        csrf = {"X-CSRF-Token": r.json()["csrf_token"]}
        minted = browser.post("/api/v1/tokens", headers=csrf, json={"name": "ci"})
        assert minted.status_code == 201, minted.text
        return cli, {"Authorization": f"Bearer {minted.json()['token']}"}, browser

    def alive(cli: dict[str, str], minted: dict[str, str], browser: TestClient) -> list[bool]:
        return [
            client.get("/api/v1/auth/me", headers=cli).status_code == 200,
            client.get("/api/v1/auth/me", headers=minted).status_code == 200,
            browser.get("/api/v1/auth/me").status_code == 200,
        ]

    # an admin resets olga's password
    olga = sessions_of("olga")
    assert alive(*olga) == [True, True, True]
    r = client.patch(
        "/api/v1/users/olga", headers=admin, json={"password": "olga-password"}
    )  # same text, new hash: still a reset
    assert r.status_code == 200
    assert alive(*olga) == [False, False, False]

    # disabling ends them; enabling again brings none back
    olga = sessions_of("olga")
    assert client.patch("/api/v1/users/olga", headers=admin, json={"disabled": True}).is_success
    assert client.patch("/api/v1/users/olga", headers=admin, json={"disabled": False}).is_success
    assert alive(*olga) == [False, False, False]

    # a user changing her own password ends her other sessions too
    vic = sessions_of("vic")
    r = client.post(
        "/api/v1/auth/password",
        headers=vic[0],
        json={"current_password": "wrong", "new_password": "vic-password-2"},
    )
    assert r.status_code == 401
    r = client.post(
        "/api/v1/auth/password",
        headers=vic[0],
        json={"current_password": "vic-password", "new_password": "vic-password-2"},
    )
    assert r.status_code == 204
    assert alive(*vic) == [False, False, False]
    r = client.post("/api/v1/auth/login", json={"username": "vic", "password": "vic-password-2"})
    assert r.status_code == 200


def test_token_lifetime_has_a_configurable_maximum(tmp_path: Path) -> None:
    from pydantic import ValidationError

    store = open_store(tmp_path / "fleet.db")
    store.create_user("ann", role="admin", password_hash=hash_password("ann-password"), now=0)
    now = [time.time()]
    api_settings = ApiSettings(max_token_ttl_s=7 * 86400, token_ttl_s=86400, session_ttl_s=3600)
    ctx = api_context(tmp_path, store, api=api_settings, clock=lambda: now[0])
    client = TestClient(create_app(ctx))
    headers = login(client, "ann")
    r = client.post("/api/v1/tokens", headers=headers, json={"name": "ci", "ttl_s": 400 * 86400})
    assert r.status_code == 400 and "max_token_ttl_s" in r.json()["detail"]
    r = client.post("/api/v1/tokens", headers=headers, json={"name": "ci", "ttl_s": 7 * 86400})
    assert r.status_code == 201
    with pytest.raises(ValidationError, match="over max_token_ttl_s"):
        ApiSettings(max_token_ttl_s=86400)  # the default token_ttl_s (90 days) is over it
    # lowering the maximum also cuts tokens issued before: nothing lives past it
    old = {"Authorization": f"Bearer {r.json()['token']}"}
    ctx.auth.max_ttl_s = 2 * 86400
    now[0] += 3 * 86400
    assert client.get("/api/v1/auth/me", headers=old).status_code == 401


# --------------------------------------------------------- 8. private files --


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_server_data_dir_and_database_are_private_whatever_they_were(tmp_path: Path) -> None:
    import os

    from fleet_server.server import FleetServer, initialize

    from .harness import ADMIN_PASSWORD, server_settings

    data = tmp_path / "fleet"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # made earlier by hand or a package
    settings = server_settings(data)
    assert isinstance(settings, ServerSettings)
    initialize(settings, admin_password=ADMIN_PASSWORD)
    assert _mode(data) == 0o700
    db = Path(settings.database_url)
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        assert not path.exists() or _mode(path) == 0o600, path
    os.chmod(data, 0o755)
    os.chmod(db, 0o644)
    server = FleetServer(settings)  # an older release left them open: starting fixes it
    try:
        assert (_mode(data), _mode(db)) == (0o700, 0o600)
    finally:
        server.deltas.close()
        server.store.close()


def test_agent_data_dir_spool_and_samples_are_private(pki: Any, tmp_path: Path) -> None:
    import os

    from agent.config import AgentSettings, LocalApiSettings
    from agent.daemon import Agent
    from agent.identity import Identity

    from .agentproc import DIST, device_dir

    data = device_dir(pki, tmp_path / "dev", "priv-1", 1)
    os.chmod(data, 0o755)
    for name in ("spool.db", "samples.db"):
        (data / name).touch()
        os.chmod(data / name, 0o644)
    settings = AgentSettings(
        data_dir=data,
        model=DIST / "digits-1.0.0-onnx-int8.efpkg",
        local_api=LocalApiSettings(port=0),
    )
    agent = Agent(settings, Identity.load(data))
    try:
        assert _mode(data) == 0o700
        for name in ("spool.db", "samples.db"):
            assert _mode(data / name) == 0o600, name
            wal = data / f"{name}-wal"
            assert not wal.exists() or _mode(wal) == 0o600
    finally:
        agent.spool.close()
        agent.samples.close()


# ------------------------------------------- 9. API docs from local assets only --


def test_api_docs_load_nothing_from_elsewhere_and_carry_the_csp(
    api: tuple[TestClient, Store, ApiContext],
) -> None:
    import re

    client, _, _ = api
    r = client.get("/api/docs")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp
    assert not re.search(r"(src|href)=\"(https?:)?//", r.text), r.text  # no CDN, no other host
    assert "<script>" not in r.text  # no inline script (the CSP would refuse it anyway)
    for src in re.findall(r'(?:src|href)="([^"]+)"', r.text):
        asset = client.get(src)
        assert asset.status_code == 200 and asset.content, src
        assert "script-src 'self'" in asset.headers["content-security-policy"]


def test_api_docs_render_in_chromium_under_the_csp(fleet: Any) -> None:
    import shutil

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    from .harness import require

    require(Path(chromium).exists(), "Debian's chromium", "run .ci/setup-system")
    from playwright import sync_api

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on(  # CSP violations are reported on the console
                "console",
                lambda m: problems.append(m.text) if m.type == "error" else None,
            )
            page.on(
                "response",
                lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            outside: list[str] = []
            page.on(
                "request",
                lambda req: (
                    outside.append(req.url)
                    if not req.url.startswith(fleet.settings.api_url)
                    else None
                ),
            )
            page.goto(f"{fleet.settings.api_url}/api/docs")
            title = page.locator(".swagger-ui .info .title")
            sync_api.expect(title).to_contain_text("edgefleet fleet server", timeout=60_000)
            assert page.locator(".opblock-tag").count() > 3  # the routes are listed
            assert outside == [] and problems == [], (outside, problems)
        finally:
            browser.close()


# ------------------------------------- 10. desired state only through the twin --


def test_a_raw_set_desired_command_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path / "fleet.db")
    store.create_user("olga", role="operator", password_hash=hash_password("olga-password"), now=0)
    sent: list[Any] = []

    class Outbox:
        def send_command(self, device_id: str, command: Any) -> None:
            sent.append((device_id, command))

    ctx = api_context(tmp_path, store, token_ttl_s=60, commands=Outbox())
    client = TestClient(create_app(ctx))
    headers = login(client, "olga")
    assert client.post("/api/v1/devices", headers=headers, json={"id": "w-9"}).status_code == 201
    r = client.post(
        "/api/v1/devices/w-9/commands",
        headers=headers,
        json={"name": "set_desired", "args": {"version": 2**63 - 1}},
    )
    assert r.status_code == 422 and "twin/desired" in r.json()["detail"]
    assert sent == [] and store.list_commands("w-9") == []
    # the twin route still works and numbers versions itself
    r = client.put(
        "/api/v1/devices/w-9/twin/desired",
        headers=headers,
        json={"config": {"telemetry_interval_s": 5}},
    )
    assert r.status_code == 200 and r.json()["desired"]["version"] == 1
    assert [c.name for _, c in sent] == ["set_desired"]
    assert (
        client.post(
            "/api/v1/devices/w-9/commands", headers=headers, json={"name": "reboot"}
        ).status_code
        == 202
    )


# ------------------------------------------------------------ 11. smaller ones --


def test_failed_logins_do_not_store_an_unknown_username_verbatim(
    api: tuple[TestClient, Store, ApiContext],
) -> None:
    client, store, _ = api
    typed = "Hunter2-my-secret-password"  # typed into the user field by mistake
    r = client.post("/api/v1/auth/login", json={"username": typed, "password": "x"})
    assert r.status_code == 401
    r = client.post("/api/v1/auth/login", json={"username": "olga", "password": "wrong"})
    assert r.status_code == 401
    entries = store.list_audit(limit=10).items
    assert typed not in repr(entries)
    assert [e.actor for e in entries[::-1]] == ["unknown", "olga"]


def test_upload_refusals_do_not_reveal_server_paths(tmp_path: Path) -> None:
    from .ota_server import make_env

    env = make_env(tmp_path)
    operator = env.login("olga")
    junk = tmp_path / "junk.efpkg"
    junk.write_bytes(b"not a zip at all" * 100)
    for kind in ("model", "firmware"):
        r = env.push(kind, junk, operator)
        assert r.status_code == 400
        detail = r.json()["detail"]
        assert str(env.data_dir) not in detail and "upload-" not in detail, detail
        assert "the uploaded file" in detail or "not a" in detail


def test_edge_agent_enroll_reads_the_token_from_a_file_or_stdin(fleet: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    import httpx

    from .harness import admin_token

    api = fleet.settings.api_url
    headers = {"Authorization": f"Bearer {admin_token(api)}"}
    agent = str(Path(sys.executable).parent / "edge-agent")

    def token(device: str) -> str:
        r = httpx.post(f"{api}/api/v1/devices", headers=headers, json={"id": device})
        return str(r.json()["token"])

    secret_file = tmp_path / "token"
    secret_file.write_text(token("tf-1") + "\n")
    base = [agent, "enroll", "--server", api]
    done = subprocess.run(
        [*base, "--token-file", str(secret_file), "--data-dir", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "enrolled as tf-1" in done.stdout
    piped = subprocess.run(
        [*base, "--token-file", "-", "--data-dir", str(tmp_path / "b")],
        input=token("tf-2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0 and "enrolled as tf-2" in piped.stdout, piped.stderr
    neither = subprocess.run(
        [*base, "--data-dir", str(tmp_path / "c")], capture_output=True, text=True, timeout=60
    )
    assert neither.returncode == 2 and "--token-file" in neither.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_package_with_bytes_around_the_zip_is_refused(tmp_path: Path, where: str) -> None:
    from edgefleet_contract import firmware, package
    from edgefleet_contract.errors import PackageError

    from .ota_server import DIGITS, FIRMWARE, make_env

    junk = b"#!/bin/sh\necho surprise\nexit 0\n"
    env = make_env(tmp_path)
    operator = env.login("olga")
    bundle = FIRMWARE / "edge-os-1.0.0.efbundle"
    for source, read, kind in (
        (DIGITS, package.read_package, "model"),
        (bundle, firmware.read_bundle, "firmware"),
    ):
        body = source.read_bytes()
        odd = tmp_path / f"odd-{kind}{source.suffix}"
        odd.write_bytes(junk + body if where == "before" else body + junk)
        with pytest.raises(PackageError, match="bytes before or after the zip"):
            read(odd)
        r = env.push(kind, odd, operator)
        assert r.status_code == 400 and "bytes before or after" in r.json()["detail"]
        read(source)  # the untouched file still reads
    assert env.client.get("/api/v1/artifacts", headers=operator).json()["total"] == 0
