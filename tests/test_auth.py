"""Passwords, tokens, roles, login throttling and redaction, on a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet_contract.errors import AuthError, EdgefleetError, PermissionDenied
from fleet_server.auth import (
    COST,
    Authenticator,
    LoginThrottle,
    Principal,
    ScryptCost,
    csrf_for,
    hash_password,
    needs_rehash,
    redact,
    token_hash,
    verify_password,
)
from fleet_server.store import open_store
from fleet_server.store.base import Role, Store

CHEAP = ScryptCost(n=2**10, r=8, p=1)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def test_password_hash_carries_its_cost_and_verifies() -> None:
    encoded = hash_password("correct horse", cost=CHEAP)
    scheme, n, r, p, _salt, _digest = encoded.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", CHEAP.n, CHEAP.r, CHEAP.p)
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct horsE", encoded)
    assert hash_password("correct horse", cost=CHEAP) != encoded  # fresh salt each time


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain",
        "bcrypt$1$2$3$AA==$AA==",
        "scrypt$x$8$1$AA==$AA==",
        "scrypt$1024$8$1$!!$AA==",
        "scrypt$4194304$8$1$AA==$AA==",
        "scrypt$1024$8$1$AA==$AA==$extra",
    ],
)
def test_malformed_hashes_never_verify_and_never_raise(encoded: str) -> None:
    assert not verify_password("whatever-password", encoded)
    assert needs_rehash(encoded)


def test_password_policy_is_a_clear_error() -> None:
    with pytest.raises(EdgefleetError, match="at least 8"):
        hash_password("short", cost=CHEAP)
    with pytest.raises(EdgefleetError, match="at most"):
        hash_password("x" * 2000, cost=CHEAP)


def test_old_cost_is_upgraded_at_the_next_login(store: Store) -> None:
    store.create_user(
        "ann", role="viewer", password_hash=hash_password("ann-password", cost=CHEAP), now=0
    )
    stronger = ScryptCost(n=2**11, r=8, p=1)
    assert needs_rehash(store.get_user("ann").password_hash, cost=stronger)
    auth = Authenticator(store, cost=stronger)
    with pytest.raises(AuthError):
        auth.check_password("ann", "wrong-password")
    assert store.get_user("ann").password_hash.split("$")[1] == str(CHEAP.n)  # not on failure
    auth.check_password("ann", "ann-password")
    upgraded = store.get_user("ann").password_hash
    assert upgraded.split("$")[1] == str(stronger.n) and not needs_rehash(upgraded, cost=stronger)
    assert verify_password("ann-password", upgraded)
    assert not needs_rehash(hash_password("x" * 8), cost=COST)


def test_wrong_user_wrong_password_and_disabled_look_the_same(store: Store) -> None:
    store.create_user(
        "bob", role="operator", password_hash=hash_password("bob-password", cost=CHEAP), now=0
    )
    auth = Authenticator(store, cost=CHEAP)
    messages = set()
    for user, password in (("nobody", "bob-password"), ("bob", "nope-nope")):
        with pytest.raises(AuthError) as info:
            auth.check_password(user, password)
        messages.add(str(info.value))
    store.update_user("bob", disabled=True)
    with pytest.raises(AuthError) as info:
        auth.check_password("bob", "bob-password")
    messages.add(str(info.value))
    assert messages == {"wrong username or password"}


def _stored_bytes(store_url: str) -> bytes:
    """Everything the database holds of the tokens: the SQLite file, or PostgreSQL's rows."""
    if not store_url.startswith("postgresql://"):
        return Path(store_url).read_bytes()
    import psycopg

    with psycopg.connect(store_url) as conn:
        return repr(conn.execute("SELECT * FROM api_tokens").fetchall()).encode()


def test_token_lifecycle_expiry_revocation_last_used(store: Store, store_url: str) -> None:
    clock = Clock()
    store.create_user(
        "cat", role="operator", password_hash=hash_password("cat-password", cost=CHEAP), now=0
    )
    auth = Authenticator(store, clock=clock, cost=CHEAP)
    secret, record = auth.issue_token(store.get_user("cat"), name="ci", ttl_s=3600)
    assert secret.startswith("eft_") and len(secret) > 40
    assert record.token_hash == token_hash(secret) and secret not in record.token_hash
    store.close()
    kept = _stored_bytes(store_url)
    assert record.token_hash.encode() in kept  # positive control: the hash is there
    assert secret.encode() not in kept  # only the hash is kept
    store = open_store(store_url)
    auth = Authenticator(store, clock=clock, cost=CHEAP)

    who = auth.principal(secret)
    assert who == Principal("cat", "operator", record.id)
    first_use = store.list_api_tokens("cat")[0].last_used
    assert first_use == clock.now
    clock.now += 10
    auth.principal(secret)
    assert store.list_api_tokens("cat")[0].last_used == first_use  # not a write per request
    clock.now += 60
    auth.principal(secret)
    assert store.list_api_tokens("cat")[0].last_used == clock.now

    store.update_user("cat", role="viewer")
    assert auth.principal(secret).role == "viewer"  # a demotion applies at once
    clock.now = record.expires_at
    with pytest.raises(AuthError, match="expired"):
        auth.principal(secret)
    clock.now = record.created_at + 100
    store.revoke_api_token(record.id, clock.now)
    with pytest.raises(AuthError, match="revoked"):
        auth.principal(secret)
    with pytest.raises(AuthError, match="fleetctl login"):
        auth.principal(None)
    with pytest.raises(AuthError):
        auth.principal("eft_" + "A" * 43)
    store.close()


def test_disabled_user_token_stops_working(store: Store) -> None:
    store.create_user(
        "dan", role="admin", password_hash=hash_password("dan-password", cost=CHEAP), now=0
    )
    auth = Authenticator(store, cost=CHEAP)
    secret, _ = auth.issue_token(store.get_user("dan"), name="t", ttl_s=60)
    assert auth.principal(secret).username == "dan"
    store.update_user("dan", disabled=True)
    with pytest.raises(AuthError, match="disabled"):
        auth.principal(secret)
    with pytest.raises(EdgefleetError, match="positive"):
        auth.issue_token(store.get_user("dan"), name="t", ttl_s=0)


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("viewer", {"viewer"}),
        ("operator", {"viewer", "operator"}),
        ("admin", {"viewer", "operator", "admin"}),
    ],
)
def test_roles_are_ordered(role: Role, allowed: set[str]) -> None:
    who = Principal("u", role)
    needed: Role
    for needed in ("viewer", "operator", "admin"):
        if needed in allowed:
            who.require(needed)
        else:
            with pytest.raises(PermissionDenied, match=f"needs the {needed} role"):
                who.require(needed)


def test_throttle_per_user_and_per_ip_with_a_window() -> None:
    clock = Clock(0.0)
    throttle = LoginThrottle(3, window_s=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("user:eve", "ip:10.0.0.1") == 0
        throttle.failed("user:eve", "ip:10.0.0.1")
        clock.now += 1
    assert throttle.retry_after("user:eve", "ip:10.0.0.9") == pytest.approx(57)
    assert throttle.retry_after("user:other", "ip:10.0.0.1") == pytest.approx(57)
    assert throttle.retry_after("user:other", "ip:10.0.0.2") == 0
    clock.now = 60.5  # the first failure has left the window
    assert throttle.retry_after("user:eve") == 0
    throttle.failed("user:eve")
    # the window filled up a second time: the wait doubles (backoff), 2 x 60 s from now
    assert throttle.retry_after("user:eve") == pytest.approx(120)
    throttle.succeeded("user:eve")
    assert throttle.retry_after("user:eve") == 0


def test_throttle_memory_is_bounded_and_evictions_counted() -> None:
    clock = Clock(0.0)
    throttle = LoginThrottle(1, window_s=60, max_keys=100, clock=clock)
    for i in range(250):
        throttle.failed(f"user:u{i}")
    assert throttle.evicted == 150
    assert throttle.retry_after("user:u249") > 0  # the newest are still remembered
    assert throttle.retry_after("user:u0") == 0
    clock.now = 1000.0  # everything is stale: a sweep drops it without evicting
    for i in range(100):
        throttle.failed(f"ip:{i}")
    assert throttle.evicted == 150
    assert throttle.retry_after("user:u249") == 0 and throttle.retry_after("ip:99") > 0


def test_redact_removes_every_secret_shape() -> None:
    enrollment = "dev-1." + "a" * 43
    api = "eft_" + "b" * 43
    cleaned = redact(
        {
            "username": "amy",
            "password": "hunter2hunter2",
            "token": api,
            "token_id": "1a2b3c",
            "headers": {"Authorization": f"Bearer {api}", "Cookie": "ef_session=xyz"},
            "note": f"enrolled with {enrollment} then used {api}",
            "items": [{"csrf_token": "c" * 32}, "password=letmein"],
            "empty_password": "",
        }
    )
    text = repr(cleaned)
    for secret in ("hunter2hunter2", api, enrollment, "xyz", "c" * 32, "letmein"):
        assert secret not in text
    assert cleaned["username"] == "amy" and cleaned["token_id"] == "1a2b3c"
    assert cleaned["note"] == "enrolled with *** then used ***"
    assert redact(42) == 42 and redact("plain text") == "plain text"


def test_csrf_value_is_bound_to_its_session() -> None:
    assert csrf_for("eft_one") == csrf_for("eft_one")
    assert csrf_for("eft_one") != csrf_for("eft_two") and len(csrf_for("x")) == 32
