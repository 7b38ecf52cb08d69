"""Passwords, API tokens, roles and login throttling (no I/O but the store).

* Passwords: scrypt (memory-hard), parameters stored with each hash so they
  can be raised later without invalidating old hashes.
* Tokens: 256 random bits shown once; only their SHA-256 is stored (a
  high-entropy secret needs no slow hash), so a database leak yields nothing
  usable.
* Roles are ordered: viewer < operator < admin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet_contract.errors import AuthError, NotFound, PermissionDenied

from .store.base import ROLES, ApiToken, Role, Store, User

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**15, 8, 1
TOKEN_PREFIX = "eft_"


def hash_password(
    password: str, *, n: int = _SCRYPT_N, r: int = _SCRYPT_R, p: int = _SCRYPT_P
) -> str:
    if len(password) < 8:
        raise ValueError("passwords need at least 8 characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * 1024 * 1024)
    salt_b64 = base64.b64encode(salt).decode()
    return f"scrypt${n}${r}${p}${salt_b64}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=128 * 1024 * 1024,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


SESSION_COOKIE = "ef_session"
CSRF_HEADER = "X-CSRF-Token"


def csrf_for(token: str) -> str:
    """The CSRF value that goes with a session token (stateless double submit: only the
    page that received it at login knows it; a cross-site form cannot read or forge it)."""
    return hashlib.sha256(b"csrf:" + token.encode()).hexdigest()[:32]


def allows(role: str, needed: Role) -> bool:
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user acting through a token (or a console session)."""

    username: str
    role: Role
    token_id: str | None = None

    def require(self, needed: Role) -> None:
        if not allows(self.role, needed):
            raise PermissionDenied(
                f"this needs the {needed} role; {self.username!r} is {self.role}"
            )


class Authenticator:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def check_password(self, username: str, password: str) -> User:
        try:
            user = self._store.get_user(username)
        except NotFound:
            verify_password(password, _DUMMY_HASH)  # same cost: no user enumeration by timing
            raise AuthError("wrong username or password") from None
        if not verify_password(password, user.password_hash) or user.disabled:
            raise AuthError("wrong username or password")
        return user

    def issue_token(self, user: User, *, name: str, ttl_s: float) -> tuple[str, ApiToken]:
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
        if not bearer:
            raise AuthError("authentication required: log in with `fleetctl login`")
        record = self._store.find_api_token(token_hash(bearer))
        now = self._clock()
        if record is None or record.revoked_at is not None:
            raise AuthError("the token is unknown or revoked; log in again")
        if record.expires_at < now:
            raise AuthError("the token has expired; log in again")
        try:
            user = self._store.get_user(record.username)
        except NotFound:
            raise AuthError("the token's user no longer exists") from None
        if user.disabled:
            raise AuthError(f"user {user.username!r} is disabled")
        if record.last_used is None or now - record.last_used > 60:
            self._store.touch_api_token(record.id, now)
        return Principal(user.username, user.role, record.id)


_DUMMY_HASH = "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + base64.b64encode(bytes(64)).decode()


class LoginThrottle:
    """At most ``limit`` failed logins per key (username, source IP) per minute."""

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, *keys: str) -> float:
        """Seconds to wait before another attempt is allowed (0 when allowed)."""
        now = self._clock()
        worst = 0.0
        with self._lock:
            for key in keys:
                window = self._failures.get(key)
                if not window:
                    continue
                while window and now - window[0] > 60:
                    window.popleft()
                if len(window) >= self._limit:
                    worst = max(worst, 60 - (now - window[0]))
        return worst

    def failed(self, *keys: str) -> None:
        now = self._clock()
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
