"""Passwords, API tokens, console sessions, roles, login throttling and redaction.

No I/O but the store, and the clock is injected, so every rule here is tested
without a server.

* Passwords: scrypt (memory-hard).  The cost parameters are stored with each
  hash, so they can be raised later: old hashes still verify and are rehashed
  with the new cost at the user's next successful login.
* API tokens: 256 random bits, shown once; only their SHA-256 is stored (a
  high-entropy secret needs no slow hash), so a database leak yields nothing
  usable.  Every token has an expiry, can be revoked, and records when it was
  last used.
* Console sessions are tokens of the same kind named ``console``, carried in an
  HttpOnly cookie instead of a header: one table, one expiry rule, and an admin
  can list and revoke a browser session like any other token.
* Roles are ordered viewer < operator < admin; :meth:`Principal.require` is the
  one check every route goes through.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from edgefleet_common.logs import redact as redact_text
from edgefleet_contract.errors import AuthError, EdgefleetError, NotFound, PermissionDenied

from .store.base import ROLES, ApiToken, Role, Store, User

TOKEN_PREFIX = "eft_"
SESSION_COOKIE = "ef_session"
CSRF_HEADER = "X-CSRF-Token"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_TOUCH_EVERY_S = 60.0
"""``last_used`` is written at most this often per token: a busy script must not
turn every read request into a database write."""


# ------------------------------------------------------------------ passwords --


@dataclass(frozen=True, order=True)
class ScryptCost:
    """scrypt's cost: ``n`` (CPU/memory, a power of two), ``r`` (block size), ``p``."""

    n: int = 2**15
    r: int = 8
    p: int = 1

    @property
    def maxmem(self) -> int:
        return 128 * self.n * self.r * self.p + 16 * 1024 * 1024


COST = ScryptCost()
"""What new hashes use (~32 MiB and ~50-100 ms per hash on a small server)."""


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise EdgefleetError(f"passwords need at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise EdgefleetError(f"passwords may have at most {MAX_PASSWORD} characters")


def hash_password(password: str, *, cost: ScryptCost = COST) -> str:
    """``scrypt$n$r$p$salt$digest`` (base64), for :func:`verify_password`."""
    check_password_policy(password)
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, cost, dklen=64)
    return "$".join(
        [
            "scrypt",
            str(cost.n),
            str(cost.r),
            str(cost.p),
            base64.b64encode(salt).decode(),
            base64.b64encode(digest).decode(),
        ]
    )


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check; a malformed or foreign hash is simply a mismatch."""
    parsed = _parse(encoded)
    if parsed is None or len(password) > MAX_PASSWORD:
        return False
    cost, salt, expected = parsed
    return hmac.compare_digest(_scrypt(password, salt, cost, dklen=len(expected)), expected)


def needs_rehash(encoded: str, *, cost: ScryptCost = COST) -> bool:
    """Whether a hash was made with a lower cost than ``cost`` (or cannot be read)."""
    parsed = _parse(encoded)
    return parsed is None or parsed[0] < cost


def _parse(encoded: str) -> tuple[ScryptCost, bytes, bytes] | None:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        cost = ScryptCost(int(n), int(r), int(p))
        if scheme != "scrypt" or not (2 <= cost.n <= 2**20 and 1 <= cost.r <= 32):
            return None
        if not 1 <= cost.p <= 16:
            return None
        return cost, base64.b64decode(salt, validate=True), base64.b64decode(digest, validate=True)
    except ValueError:
        return None


def _scrypt(password: str, salt: bytes, cost: ScryptCost, *, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=cost.n,
        r=cost.r,
        p=cost.p,
        maxmem=cost.maxmem,
        dklen=dklen,
    )


@functools.cache
def _dummy_hash() -> str:
    """A real hash of a random password: unknown users cost as much as known ones,
    so response times do not tell which usernames exist."""
    return hash_password(secrets.token_urlsafe(16))


# --------------------------------------------------------------------- tokens --


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_for(token: str) -> str:
    """The CSRF value that goes with a session token (stateless double submit: only the
    page that received it at login knows it; a cross-site form cannot read or forge it)."""
    return hashlib.sha256(b"csrf:" + token.encode()).hexdigest()[:32]


# ---------------------------------------------------------------------- roles --


def allows(role: str, needed: Role) -> bool:
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user acting through a token or a console session."""

    username: str
    role: Role
    token_id: str | None = None

    def require(self, needed: Role) -> None:
        """The one role check: raise :class:`PermissionDenied` below ``needed``."""
        if not allows(self.role, needed):
            raise PermissionDenied(
                f"this needs the {needed} role; {self.username!r} is {self.role}"
            )


class Authenticator:
    """Turns credentials into a :class:`Principal`, against the store."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        cost: ScryptCost = COST,
        max_ttl_s: float = 90 * 86400,
    ) -> None:
        self._store = store
        self._clock = clock
        self._cost = cost
        self.max_ttl_s = max_ttl_s

    def check_password(self, username: str, password: str) -> User:
        """The user, if the password is right and the account enabled.

        The error never says which of the two was wrong (no user enumeration).
        """
        try:
            user = self._store.get_user(username)
        except NotFound:
            verify_password(password, _dummy_hash())
            raise AuthError("wrong username or password") from None
        if not verify_password(password, user.password_hash) or user.disabled:
            raise AuthError("wrong username or password")
        if needs_rehash(user.password_hash, cost=self._cost):
            user = self._store.update_user(
                username, password_hash=hash_password(password, cost=self._cost)
            )
        return user

    def end_sessions(self, username: str) -> int:
        """Revoke every token and console session of ``username`` (after a password change
        or reset, and when the account is disabled or enabled again)."""
        return self._store.revoke_user_tokens(username, self._clock())

    def issue_token(self, user: User, *, name: str, ttl_s: float) -> tuple[str, ApiToken]:
        """A new token for ``user``: the secret (show it once) and the stored record."""
        if ttl_s <= 0:
            raise EdgefleetError("a token needs a positive lifetime")
        if ttl_s > self.max_ttl_s:
            raise EdgefleetError(
                f"a token may live at most {self.max_ttl_s:.0f} s (api.max_token_ttl_s); "
                f"{ttl_s:.0f} s was asked for"
            )
        secret = new_token()
        now = self._clock()
        record = ApiToken(
            id=secrets.token_hex(8),
            username=user.username,
            name=name,
            token_hash=token_hash(secret),
            created_at=now,
            expires_at=now + ttl_s,
        )
        self._store.create_api_token(record)
        return secret, record

    def principal(self, bearer: str | None) -> Principal:
        """Who holds ``bearer`` (a token or a session cookie value), checked now.

        Revocation, expiry and a disabled or demoted user take effect on the
        very next request: nothing about the caller is cached.
        """
        if not bearer:
            raise AuthError("authentication required: log in with `fleetctl login`")
        record = self._store.find_api_token(token_hash(bearer))
        now = self._clock()
        if record is None or record.revoked_at is not None:
            raise AuthError("the token is unknown or revoked; log in again")
        if min(record.expires_at, record.created_at + self.max_ttl_s) <= now:
            raise AuthError("the token has expired; log in again")
        try:
            user = self._store.get_user(record.username)
        except NotFound:
            raise AuthError("the token's user no longer exists") from None
        if user.disabled:
            raise AuthError(f"user {user.username!r} is disabled")
        if record.last_used is None or now - record.last_used >= _TOUCH_EVERY_S:
            self._store.touch_api_token(record.id, now)
        return Principal(user.username, user.role, record.id)


# ------------------------------------------------------------ login throttle --


class FailureLog(Protocol):
    """Where several API replicas keep failed logins (the store's ``login_failures``)."""

    def record_login_failure(self, source: str, ts: float, *, forget_before: float) -> None: ...
    def login_failures(self, source: str, *, since: float) -> list[float]: ...
    def clear_login_failures(self, source: str) -> None: ...


@dataclass
class _Source:
    """What the throttle remembers of one key."""

    failures: deque[float]
    strikes: int = 0
    """How many times its window filled up."""
    until: float = 0.0
    """It must wait until then (the latest strike's backoff)."""


class LoginThrottle:
    """At most ``limit`` failed logins per key (a source address) per window, with backoff.

    The login route keys it by source address only: keying it by username too
    would let anyone lock the real admin out from everywhere with a few wrong
    passwords.  A source that fills its window again waits twice as long each
    time (``window_s``, then 2x, 4x ... up to ``max_wait_s``), so a guesser is
    slowed to a crawl while everyone else logs in as usual; a success or a quiet
    ``2 * max_wait_s`` forgets it.  Memory is bounded: at most ``max_keys`` keys
    are tracked, stale ones are swept, and when an attacker floods it with fresh
    keys the oldest are forgotten first (``evicted`` counts them).
    """

    def __init__(
        self,
        limit: int,
        *,
        window_s: float = 60.0,
        max_wait_s: float = 3600.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        shared: FailureLog | None = None,
    ) -> None:
        if limit < 1 or window_s <= 0 or max_keys < 1:
            raise ValueError("limit, window_s and max_keys must be positive")
        self._limit = limit
        self._window = window_s
        self._max_wait = max(max_wait_s, window_s)
        self._max_keys = max_keys
        self._clock = time.time if shared is not None else clock
        self._shared = shared
        """Several API replicas: the failures are rows in the database (wall-clock
        times), and each call replays a key's recent failures through the same rules."""
        self._sources: dict[str, _Source] = {}
        self._lock = threading.Lock()
        self.evicted = 0

    def retry_after(self, *keys: str) -> float:
        """Seconds to wait before another attempt is allowed (0 when allowed)."""
        now = self._clock()
        worst = 0.0
        with self._lock:
            for key in keys:
                source = self._replay(key, now) if self._shared else self._sources.get(key)
                if source is None:
                    continue
                self._expire(source.failures, now)
                worst = max(worst, source.until - now)
                if len(source.failures) >= self._limit:
                    worst = max(worst, self._window - (now - source.failures[0]))
        return worst

    def failed(self, *keys: str) -> None:
        now = self._clock()
        if self._shared is not None:
            for key in keys:
                self._shared.record_login_failure(key, now, forget_before=now - self._horizon)
            return
        with self._lock:
            for key in keys:
                source = self._advance(self._sources.pop(key, None), now)
                self._sources[key] = source  # re-insert: dict order = least recent first
            if len(self._sources) > self._max_keys:
                self._sweep(now)

    def _advance(self, source: _Source | None, now: float) -> _Source:
        """``source`` after one more failure at ``now``."""
        source = source or _Source(deque())
        if source.strikes and now - source.until > 2 * self._max_wait:
            source = _Source(deque())  # quiet for long enough: a fresh start
        self._expire(source.failures, now)
        source.failures.append(now)
        while len(source.failures) > self._limit:
            source.failures.popleft()  # only the newest `limit` failures matter
        if len(source.failures) >= self._limit:
            source.strikes += 1
            source.until = source.failures[0] + self._window  # the first time
            if source.strikes > 1:
                backoff = self._window * 2 ** min(source.strikes - 1, 32)
                source.until = now + min(backoff, self._max_wait)
        return source

    @property
    def _horizon(self) -> float:
        """How far back failures still matter (a quiet ``2 * max_wait`` forgets a key)."""
        return 2 * self._max_wait + self._window

    def _replay(self, key: str, now: float) -> _Source | None:
        """A key's state rebuilt from the failures the database holds for it."""
        assert self._shared is not None
        source: _Source | None = None
        for ts in self._shared.login_failures(key, since=now - self._horizon):
            source = self._advance(source, ts)
        return source

    def succeeded(self, *keys: str) -> None:
        if self._shared is not None:
            for key in keys:
                self._shared.clear_login_failures(key)
            return
        with self._lock:
            for key in keys:
                self._sources.pop(key, None)

    def _expire(self, window: deque[float], now: float) -> None:
        while window and now - window[0] >= self._window:
            window.popleft()

    def _sweep(self, now: float) -> None:
        stale = [
            k
            for k, s in self._sources.items()
            if (not s.failures or now - s.failures[-1] >= self._window) and now >= s.until
        ]
        for key in stale:
            del self._sources[key]
        while len(self._sources) > self._max_keys:
            del self._sources[next(iter(self._sources))]
            self.evicted += 1


# ------------------------------------------------------------------ redaction --

_SECRET_KEY = re.compile(
    r"(?i)^(?:.*password.*|.*secret.*|token|.*_token|authorization|cookie|set-cookie"
    r"|x-csrf-token|.*private_key.*|signature_b64)$"
)
_SECRET_VALUE = re.compile(
    r"\beft_[A-Za-z0-9_-]{16,}"  # API tokens and session ids
    r"|\b[A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]{43}\b"  # enrollment tokens (<device>.<secret>)
)


def redact(value: Any) -> Any:
    """``value`` with every secret replaced by ``***``, for logs and the audit trail.

    Mappings lose the values of secret-named keys (password, token, cookie…);
    strings lose anything shaped like an API or enrollment token, a bearer
    header or a private key; lists and tuples are redacted item by item.
    """
    if isinstance(value, Mapping):
        return {
            k: "***" if _SECRET_KEY.match(str(k)) and v else redact(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(_SECRET_VALUE.sub("***", value))
    return value
