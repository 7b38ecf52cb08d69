"""Passwords, tokens, roles, login throttling and redaction, on a real SQLite store."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any, cast

import pytest

from edgefleet_contract.errors import AuthError, EdgefleetError, NotFound, PermissionDenied
from fleet_server.auth import (
    COST,
    MAX_PASSWORD,
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
from fleet_server.store.base import Role, Store, User

CHEAP = ScryptCost(n=2**10, r=8, p=1)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


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
    assert cleaned["password"] == "***" and cleaned["empty_password"] == ""
    assert redact(["amy", 3, ("x", api)]) == ["amy", 3, ["x", "***"]]
    assert cleaned["note"] == "enrolled with *** then used ***"
    assert redact(42) == 42 and redact("plain text") == "plain text"


def test_csrf_value_is_bound_to_its_session() -> None:
    assert csrf_for("eft_one") == csrf_for("eft_one")
    assert csrf_for("eft_one") != csrf_for("eft_two") and len(csrf_for("x")) == 32


@pytest.mark.parametrize(
    ("encoded", "readable"),
    [
        ("scrypt$2$1$1$AAAA$AAAA", True),  # the smallest cost allowed
        ("scrypt$1048576$32$16$AAAA$AAAA", True),  # the largest
        ("scrypt$1$1$1$AAAA$AAAA", False),
        ("scrypt$2097152$8$1$AAAA$AAAA", False),
        ("scrypt$1024$33$1$AAAA$AAAA", False),
        ("scrypt$1024$8$17$AAAA$AAAA", False),
        ("scrypt$1024$8$1$A?AAA$AAAA", False),  # not base64: never decoded leniently
        ("scrypt$1024$8$1$AAAA$A?AAA", False),
    ],
)
def test_hash_cost_bounds_and_strict_base64(encoded: str, readable: bool) -> None:
    """A hash outside the bounds (or not strict base64) is unreadable: it needs a rehash even
    against the very cost it names, and never verifies."""
    _, n, r, p, *_ = encoded.split("$")
    assert needs_rehash(encoded, cost=ScryptCost(int(n), int(r), int(p))) is not readable


def test_every_cost_parameter_is_read_back() -> None:
    two_lanes = ScryptCost(n=2**10, r=8, p=2)
    encoded = hash_password("correct horse", cost=two_lanes)
    assert not needs_rehash(encoded, cost=two_lanes)
    assert needs_rehash(encoded, cost=ScryptCost(n=2**10, r=8, p=3))
    assert verify_password("correct horse", encoded)
    tiny = hash_password("correct horse", cost=ScryptCost(n=2, r=1, p=1))
    assert verify_password("correct horse", tiny)


def test_hash_has_a_128_bit_salt_and_a_512_bit_digest() -> None:
    *_, salt, digest = hash_password("correct horse", cost=CHEAP).split("$")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 64


def test_the_longest_password_allowed_is_accepted_and_verifies() -> None:
    longest = "x" * MAX_PASSWORD
    encoded = hash_password(longest, cost=CHEAP)
    assert verify_password(longest, encoded)
    assert not verify_password(longest + "x", encoded)


def test_a_login_at_the_current_cost_leaves_the_hash_alone(store: Store) -> None:
    store.create_user(
        "eli", role="viewer", password_hash=hash_password("eli-password", cost=CHEAP), now=0
    )
    before = store.get_user("eli").password_hash
    Authenticator(store, cost=CHEAP).check_password("eli", "eli-password")
    assert store.get_user("eli").password_hash == before  # no rehash, no write


def test_end_sessions_revokes_only_that_users_tokens(store: Store) -> None:
    clock = Clock()
    for name in ("fay", "gus"):
        store.create_user(
            name, role="viewer", password_hash=hash_password(f"{name}-password", cost=CHEAP), now=0
        )
    auth = Authenticator(store, clock=clock, cost=CHEAP)
    fay = [auth.issue_token(store.get_user("fay"), name=n, ttl_s=60)[0] for n in ("a", "b")]
    gus, _ = auth.issue_token(store.get_user("gus"), name="a", ttl_s=60)
    clock.now += 5
    assert auth.end_sessions("fay") == 2
    for secret in fay:
        with pytest.raises(AuthError, match="revoked"):
            auth.principal(secret)
    assert {t.revoked_at for t in store.list_api_tokens("fay")} == {clock.now}
    assert auth.principal(gus).username == "gus"


def test_token_record_and_lifetime_bounds(store: Store) -> None:
    store.create_user(
        "hal", role="viewer", password_hash=hash_password("hal-password", cost=CHEAP), now=0
    )
    auth = Authenticator(store, cost=CHEAP, max_ttl_s=3600)
    hal = store.get_user("hal")
    secret, record = auth.issue_token(hal, name="laptop", ttl_s=0.5)  # short but positive
    assert len(secret) == len("eft_") + 43  # 256 random bits, url-safe base64
    assert record.name == "laptop" and store.list_api_tokens("hal")[0].name == "laptop"
    assert auth.issue_token(hal, name="max", ttl_s=3600)[1].expires_at > 0  # the maximum is ok
    with pytest.raises(EdgefleetError) as info:
        auth.issue_token(hal, name="long", ttl_s=3601)
    assert str(info.value) == (
        "a token may live at most 3600 s (api.max_token_ttl_s); 3601 s was asked for"
    )
    with pytest.raises(EdgefleetError) as info:
        auth.issue_token(hal, name="none", ttl_s=0)
    assert str(info.value) == "a token needs a positive lifetime"


def test_principal_errors_tell_the_caller_what_to_do(store: Store) -> None:
    clock = Clock()
    store.create_user(
        "ida", role="viewer", password_hash=hash_password("ida-password", cost=CHEAP), now=0
    )
    auth = Authenticator(store, clock=clock, cost=CHEAP)
    secret, record = auth.issue_token(store.get_user("ida"), name="t", ttl_s=600)

    def error(bearer: str | None) -> str:
        with pytest.raises(AuthError) as info:
            auth.principal(bearer)
        return str(info.value)

    assert error(None) == "authentication required: log in with `fleetctl login`"
    assert error("eft_" + "A" * 43) == "the token is unknown or revoked; log in again"
    auth.principal(secret)
    clock.now += 60  # exactly the touch interval: last_used is written again
    auth.principal(secret)
    assert store.list_api_tokens("ida")[0].last_used == clock.now
    clock.now = record.expires_at
    assert error(secret) == "the token has expired; log in again"


@pytest.mark.parametrize(
    "kwargs", [{"limit": 0}, {"window_s": 0.0}, {"window_s": -1.0}, {"max_keys": 0}]
)
def test_throttle_refuses_a_bound_that_is_not_positive(kwargs: dict[str, float]) -> None:
    settings = {"limit": 1, **kwargs}
    limit = int(settings.pop("limit"))
    with pytest.raises(ValueError, match=r"^limit, window_s and max_keys must be positive$"):
        LoginThrottle(limit, **settings)  # type: ignore[arg-type]


def test_throttle_accepts_the_smallest_bounds() -> None:
    clock = Clock(0.0)
    throttle = LoginThrottle(1, window_s=0.5, max_keys=1, clock=clock)
    throttle.failed("ip:a")
    assert throttle.retry_after("ip:a") == pytest.approx(0.5)


def test_throttle_defaults_a_minute_doubling_up_to_an_hour() -> None:
    clock = Clock(0.0)
    throttle = LoginThrottle(1, clock=clock)
    waits = []
    for _ in range(8):
        throttle.failed("ip:a")
        waits.append(throttle.retry_after("ip:a"))
        clock.now += waits[-1]
    assert waits == [60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_throttle_backoff_doubles_each_strike_up_to_the_cap() -> None:
    clock = Clock(0.0)
    throttle = LoginThrottle(1, window_s=10, max_wait_s=1000, clock=clock)
    waits = []
    for _ in range(9):
        throttle.failed("ip:a")
        waits.append(throttle.retry_after("ip:a"))
        clock.now += waits[-1]
    assert waits == [10, 20, 40, 80, 160, 320, 640, 1000, 1000]


@pytest.mark.parametrize(("quiet", "fresh"), [(1170.0, False), (1200.0, False), (1240.0, True)])
def test_a_quiet_twice_max_wait_after_the_last_wait_forgets_the_strikes(
    quiet: float, fresh: bool
) -> None:
    """The first strike's wait ends 60 s after the first failure; the strikes are forgotten
    once more than ``2 * max_wait_s`` (1200 s) has passed since then."""
    clock = Clock(0.0)
    throttle = LoginThrottle(1, window_s=60, max_wait_s=600, clock=clock)
    throttle.failed("ip:a")
    clock.now = 60 + quiet
    throttle.failed("ip:a")
    assert throttle.retry_after("ip:a") == (60 if fresh else 120)


def test_failures_that_left_the_window_do_not_count_towards_a_strike() -> None:
    clock = Clock(0.0)
    throttle = LoginThrottle(3, window_s=60, clock=clock)
    for now in (0.0, 1.0, 100.0, 101.0, 102.0):
        clock.now = now
        throttle.failed("ip:a")
    assert throttle.retry_after("ip:a") == pytest.approx(58)  # a first strike, not a third


def test_a_failure_exactly_a_window_old_has_left_it() -> None:
    clock = Clock(0.0)
    throttle = LoginThrottle(2, window_s=60, clock=clock)
    for now in (0.0, 60.0, 61.0):
        clock.now = now
        throttle.failed("ip:a")
    assert throttle.retry_after("ip:a") == pytest.approx(59)  # 60 and 61: a first strike


def test_a_sweep_keeps_exactly_the_newest_keys() -> None:
    clock = Clock(0.0)
    throttle = LoginThrottle(1, window_s=60, max_keys=100, clock=clock)
    for i in range(250):
        throttle.failed(f"ip:{i}")
    assert throttle.retry_after("ip:150") > 0 and throttle.retry_after("ip:149") == 0


def test_a_sweep_runs_only_when_memory_is_over_the_bound() -> None:
    """At the bound nothing is forgotten: a repeat offender's strikes still count."""
    clock = Clock(0.0)
    throttle = LoginThrottle(1, window_s=60, max_keys=2, clock=clock)
    throttle.failed("ip:a")
    clock.now = 100.0
    throttle.failed("ip:b")  # two keys, the bound: "ip:a" is stale but kept
    clock.now = 110.0
    throttle.failed("ip:a")
    assert throttle.retry_after("ip:a") == pytest.approx(120)  # a second strike


def test_a_sweep_keeps_a_source_with_a_recent_failure() -> None:
    clock = Clock(1000.0)
    throttle = LoginThrottle(2, window_s=60, max_keys=2, clock=clock)
    throttle.failed("ip:b")
    throttle.failed("ip:c")
    clock.now = 1001.0
    throttle.failed("ip:a")  # over the bound; nobody is stale, so the oldest goes
    assert throttle.evicted == 1
    clock.now = 1002.0
    throttle.failed("ip:a")
    assert throttle.retry_after("ip:a") == pytest.approx(59)  # its first failure was kept


def test_a_sweep_drops_sources_whose_window_and_wait_just_ended() -> None:
    clock = Clock(0.0)
    throttle = LoginThrottle(1, window_s=60, max_keys=1, clock=clock)
    throttle.failed("ip:a")  # its window and its wait both end at 60
    clock.now = 60.0
    throttle.failed("ip:b")
    assert throttle.evicted == 0  # "ip:a" was stale, dropped rather than evicted


class Failures:
    """An in-memory :class:`FailureLog` that remembers how it was asked."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float]] = []
        self.forget_before: list[float] = []
        self.since: list[float] = []

    def record_login_failure(self, source: str, ts: float, *, forget_before: float) -> None:
        self.forget_before.append(forget_before)
        self.rows = [row for row in self.rows if row[1] >= forget_before] + [(source, ts)]

    def login_failures(self, source: str, *, since: float) -> list[float]:
        self.since.append(since)
        return [ts for key, ts in self.rows if key == source and ts >= since]

    def clear_login_failures(self, source: str) -> None:
        self.rows = [row for row in self.rows if row[0] != source]


def test_a_shared_throttle_keeps_wall_clock_failures_in_the_log() -> None:
    log = Failures()
    throttle = LoginThrottle(2, window_s=60, max_wait_s=600, clock=lambda: 0.0, shared=log)
    throttle.failed("ip:a")
    [(source, ts)] = log.rows
    assert source == "ip:a" and ts > 1e9  # wall-clock time, not the clock given for one process
    assert ts - log.forget_before[0] == pytest.approx(2 * 600 + 60)  # the horizon
    assert throttle.retry_after("ip:a") == 0
    assert log.since[-1] == pytest.approx(ts - 1260, abs=30)
    throttle.failed("ip:a")
    assert 0 < throttle.retry_after("ip:a") <= 60
    assert throttle.retry_after("ip:b") == 0
    throttle.succeeded("ip:a")
    assert log.rows == [] and throttle.retry_after("ip:a") == 0


def test_a_hash_with_a_shorter_digest_still_verifies() -> None:
    """The digest's length is read from the hash, like its cost."""
    salt = b"s" * 16
    digest = hashlib.scrypt(b"correct horse", salt=salt, n=CHEAP.n, r=CHEAP.r, p=CHEAP.p, dklen=32)
    parts = [str(CHEAP.n), str(CHEAP.r), str(CHEAP.p)]
    encoded = "$".join(["scrypt", *parts, *(base64.b64encode(b).decode() for b in (salt, digest))])
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct horsE", encoded)


def test_success_for_a_source_that_never_failed_is_fine() -> None:
    throttle = LoginThrottle(1, clock=Clock(0.0))
    throttle.succeeded("ip:new")
    assert throttle.retry_after("ip:new") == 0


class _UsersGone:
    """A store whose users have all been removed (tokens kept)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def get_user(self, username: str) -> User:
        raise NotFound(f"no user {username!r}")


def test_a_token_whose_user_is_gone_says_so(store: Store) -> None:
    store.create_user(
        "jan", role="viewer", password_hash=hash_password("jan-password", cost=CHEAP), now=0
    )
    secret, _ = Authenticator(store, cost=CHEAP).issue_token(
        store.get_user("jan"), name="t", ttl_s=60
    )
    gone = Authenticator(cast(Store, _UsersGone(store)), cost=CHEAP)
    with pytest.raises(AuthError) as info:
        gone.principal(secret)
    assert str(info.value) == "the token's user no longer exists"
