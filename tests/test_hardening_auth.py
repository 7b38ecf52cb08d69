"""Hardening: login throttling slows the source, not the user; sessions end and token
lifetimes are bounded; failed logins do not store what was typed.

Regression tests for the security review of issue 19: each failed before its fix.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleet_server.api import ApiContext, create_app
from fleet_server.auth import hash_password
from fleet_server.config import ApiSettings
from fleet_server.store import open_store
from fleet_server.store.base import Store

from .api_kit import api_context, login
from .hardening_kit import throttled_api


@pytest.fixture
def api(tmp_path: Path) -> tuple[TestClient, Store, ApiContext]:
    return throttled_api(tmp_path)


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
