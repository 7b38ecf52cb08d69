"""Singleton leases: the work that must run in exactly one fleet-server process at a time.

The rollout driver, the training runner, the TUF re-signer and telemetry retention
each run under a named lease.  Two implementations share one small seam:

* :class:`LocalLease` -- SQLite is one host and one process (``--role all``), so the
  lease is a process-wide flag: the first taker holds it until it lets go.
* :class:`PgLease` -- a session-level ``pg_try_advisory_lock`` on a connection used
  for nothing else.  PostgreSQL releases the lock the moment that session ends,
  which is what makes failover work: a holder killed with ``kill -9`` closes its
  socket, its backend exits, and the next replica's try succeeds.  The holder
  heartbeats on the same connection; a heartbeat that fails means the session (and
  with it the lock) may be gone, so the work is stopped before anything else runs
  it twice for long.

:class:`Singleton` is the loop around one lease: try, start the work when taken,
heartbeat, stop the work when the lease is lost, release on shutdown.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from edgefleet_common.background import IntervalThread, call_guarded

log = logging.getLogger(__name__)

ROLLOUTS = "rollouts"
TRAINING = "training"
TUF_RESIGN = "tuf-resign"
RETENTION = "retention"
SINGLETONS = (ROLLOUTS, TRAINING, TUF_RESIGN, RETENTION)
"""Every lease name fleet-server takes (one advisory-lock key each)."""


class Lease(Protocol):
    """One named, exclusive claim; not thread-safe (its :class:`Singleton` owns it)."""

    name: str

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; ``True`` when this process holds it now."""
        ...

    def heartbeat(self) -> bool:
        """``True`` while the lease is still held; ``False`` once it was lost."""
        ...

    def release(self) -> None:
        """Let go (idempotent); another process may take it right after."""
        ...


class LocalLease:
    """The single-process lease (SQLite): exclusive among the threads of this process."""

    _held: set[str] = set()
    _lock = threading.Lock()

    def __init__(self, name: str) -> None:
        self.name = name
        self._mine = False

    def try_acquire(self) -> bool:
        with LocalLease._lock:
            if self._mine:
                return True
            if self.name in LocalLease._held:
                return False
            LocalLease._held.add(self.name)
            self._mine = True
            return True

    def heartbeat(self) -> bool:
        return self._mine

    def release(self) -> None:
        with LocalLease._lock:
            if self._mine:
                LocalLease._held.discard(self.name)
                self._mine = False


def advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a lease name (namespaced)."""
    digest = hashlib.blake2b(f"edgefleet.lease.{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
    "connect_timeout": 5,
}
"""A lease connection notices a dead peer within seconds, not the kernel's two hours."""


class PgLease:
    """A session-level PostgreSQL advisory lock on a dedicated connection."""

    def __init__(self, name: str, dsn: str, *, application: str = "fleet-server") -> None:
        self.name = name
        self.key = advisory_key(name)
        self._dsn = dsn
        self._application = f"{application} lease:{name}"[:63]
        self._conn: Any = None
        self._held = False

    def try_acquire(self) -> bool:
        if self._held:
            return self.heartbeat()
        try:
            conn = self._connection()
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        except Exception as exc:  # psycopg.Error, OSError: the database is not reachable
            log.warning("lease %s: cannot reach PostgreSQL (%s)", self.name, _one_line(exc))
            self._drop()
            return False
        self._held = bool(row and row[0])
        return self._held

    def heartbeat(self) -> bool:
        if not self._held:
            return False
        try:
            self._conn.execute("SELECT 1").fetchone()
        except Exception as exc:
            log.warning("lease %s lost: %s", self.name, _one_line(exc))
            self._drop()
            return False
        return True

    def release(self) -> None:
        if self._held and self._conn is not None:
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            except Exception:
                log.debug("lease %s: unlock failed (the session ends anyway)", self.name)
        self._drop()

    def _connection(self) -> Any:
        if self._conn is None:
            import psycopg

            self._conn = psycopg.connect(
                self._dsn, autocommit=True, application_name=self._application, **KEEPALIVE
            )
        return self._conn

    def _drop(self) -> None:
        self._held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("lease %s: close failed", self.name)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class Singleton:
    """Runs ``start`` while this process holds ``lease`` and ``stop`` when it stops holding it.

    ``start`` and ``stop`` run on the singleton's own thread, never concurrently; a
    ``start`` that raises lets the lease go so another replica can try.
    """

    def __init__(
        self,
        lease: Lease,
        start: Callable[[], None],
        stop: Callable[[], None],
        *,
        tick: Callable[[], None] | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self.lease = lease
        self._start = start
        self._stop_work = stop
        self._tick = tick
        """Runs after every good heartbeat (the holder's periodic look at the store)."""
        self.interval_s = interval_s
        self.holding = threading.Event()
        """Set while the work runs here (tests and metrics read it)."""
        self.acquired = 0
        """Times this process took the lease."""
        self._thread = IntervalThread(
            f"lease-{lease.name}",
            self._beat,
            interval_s=lambda: self.interval_s,
            log=log,
            failure=f"lease {lease.name}: its heartbeat failed",
        )

    def start(self) -> None:
        """Try once right away (a lone process starts its work before it serves), then
        keep trying, or heartbeating, on the singleton's thread."""
        if self.lease.try_acquire():
            self._take()
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._thread.stop(timeout)
        self._let_go()

    def _beat(self) -> None:
        """One look at the lease: heartbeat (then the tick) while held, else try to take it."""
        if self.holding.is_set():
            if not self.lease.heartbeat():
                log.warning("lease %s lost: stopping its work here", self.lease.name)
                self._let_go()
            elif self._tick is not None:
                self._safe(self._tick, "its periodic step")
        elif self.lease.try_acquire():
            self._take()

    def _take(self) -> None:
        log.info("lease %s taken: starting its work here", self.lease.name)
        try:
            self._start()
        except Exception:
            log.exception("lease %s: its work failed to start; letting it go", self.lease.name)
            self._safe(self._stop_work, "stopping its work")
            self.lease.release()
            return
        self.acquired += 1
        self.holding.set()

    def _let_go(self) -> None:
        if self.holding.is_set():
            self.holding.clear()
            self._safe(self._stop_work, "stopping its work")
        self.lease.release()

    def _safe(self, fn: Callable[[], None], what: str) -> None:
        call_guarded(fn, log, "lease %s: %s failed", self.lease.name, what)
