"""The store-and-forward outbox: SQLite, bounded, FIFO, survives kill -9 and reboots.

Every must-arrive message is inserted here before it is sent and deleted only
when the broker acknowledged it.  The outbox always holds a contiguous run of
the most recent pushes (minus the acknowledged ones), oldest first:

* bounds are total payload bytes and age; when one is hit the *oldest* entries
  go first and are counted in a persistent counter, which the device reports
  (``SpoolStats.dropped_total``) so loss is visible on the server, not silent;
* age is enforced on every push and when the spool is opened, so a device that
  was switched off for a month does not start by replaying stale batches.

Durability, WAL journal.  ``synchronous=NORMAL`` already survives ``kill -9``
(a committed transaction is in the WAL, in the OS page cache, before COMMIT
returns) but a power cut or kernel panic can lose the last commits.  Edge
devices lose power far more often than servers, so a push commits with
``synchronous=FULL`` (WAL fsync'd before ``push`` returns).  Acknowledgements
commit with NORMAL: losing one only re-sends a batch the server de-duplicates
by ``batch_id``, and the next push's fsync makes it durable anyway.  This
keeps a post-outage drain from paying one fsync per delivered entry.

A file SQLite reports as corrupt (on open via ``PRAGMA quick_check``, or later
as SQLITE_CORRUPT / SQLITE_NOTADB) is moved aside as
``<name>.corrupt-<unix time>``, a fresh spool is started and the recovery is
counted: a bad SD-card sector costs the queued entries, never the agent.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from edgefleet_common.private import private_file
from edgefleet_contract.errors import ConfigError, LinkError, StoreError
from edgefleet_contract.messages import SpoolStats

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


@dataclass(frozen=True)
class SpoolEntry:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_at: float


class Spool:
    """Thread-safe; one instance per file per process."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes < 1 or not max_age_s > 0:
            raise ConfigError(
                f"spool bounds must be positive (max_bytes={max_bytes}, max_age_s={max_age_s})"
            )
        self.path = path
        self._max_bytes = max_bytes
        self._max_age = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the spool directory {path.parent}: {exc}") from exc
        self._synchronous = ""
        with self._lock:
            self._db = self._open()
            self._bytes = self._sum_bytes()
            self._write(self._expire_stale)

    # --------------------------------------------------------- plumbing --

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise StoreError(f"cannot open the spool {self.path}: {exc}") from exc
            return self._start_fresh(exc)

    def _connect(self) -> sqlite3.Connection:
        private_file(self.path)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("PRAGMA quick_check found damage")
        except BaseException:
            db.close()
            raise
        return db

    def _start_fresh(self, cause: Exception) -> sqlite3.Connection:
        """Move the damaged file (and its WAL) aside and open an empty spool."""
        stamp = int(self._clock())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 0
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        salvaged = _salvage(self.path)
        try:
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                side = Path(f"{self.path}{suffix}")
                if side.exists():
                    side.rename(Path(f"{aside}{suffix}"))
            db = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"the spool {self.path} is damaged ({cause}) and could not be replaced: {exc}; "
                "free or fix the data directory's disk"
            ) from exc
        log.error(
            "spool %s was damaged (%s); moved to %s, starting empty (%d queued entries lost)",
            self.path,
            cause,
            aside,
            salvaged.pop("lost", 0),
        )
        salvaged["corrupt_recoveries"] = salvaged.get("corrupt_recoveries", 0) + 1
        for name, value in salvaged.items():
            _bump(db, name, value)
        return db

    def _recover(self, cause: sqlite3.DatabaseError) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._db = self._start_fresh(cause)
        self._synchronous = ""
        self._bytes = 0

    def _guarded(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` (lock held); on corruption start fresh and run it once more."""
        try:
            return op(self._db)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise StoreError(f"spool {self.path}: {exc}") from exc
            self._recover(exc)
            return op(self._db)

    def _write(self, op: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``op`` in one write transaction; roll back (and re-count bytes) on failure."""

        def transaction(db: sqlite3.Connection) -> T:
            mode = "FULL" if durable else "NORMAL"
            if self._synchronous != mode:
                db.execute(f"PRAGMA synchronous={mode}")
                self._synchronous = mode
            db.execute("BEGIN IMMEDIATE")
            try:
                result = op(db)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    self._bytes = self._sum_bytes()
                raise
            return result

        return self._guarded(transaction)

    def _sum_bytes(self) -> int:
        row = self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        return int(row[0])

    # ------------------------------------------------------------- bounds --

    def _expire_stale(self, db: sqlite3.Connection, keep: int = 0) -> None:
        """Drop the oldest run up to the newest entry past ``max_age_s``.

        Deleting the whole prefix (not just the entries whose own timestamp is
        old) keeps the outbox contiguous even if the wall clock stepped back.
        """
        rows = db.execute(
            "DELETE FROM outbox WHERE id != ? AND id <= "
            "(SELECT MAX(id) FROM outbox WHERE created_at < ?) RETURNING LENGTH(payload)",
            (keep, self._clock() - self._max_age),
        ).fetchall()
        self._bytes -= sum(int(r[0]) for r in rows)
        _count_dropped(db, len(rows))

    def _enforce_size(self, db: sqlite3.Connection, keep: int) -> None:
        dropped = 0
        while self._bytes > self._max_bytes:
            row = db.execute(
                "DELETE FROM outbox WHERE id = (SELECT MIN(id) FROM outbox WHERE id != ?) "
                "RETURNING LENGTH(payload)",
                (keep,),
            ).fetchone()
            if row is None:
                break
            self._bytes -= int(row[0])
            dropped += 1
        _count_dropped(db, dropped)

    # ---------------------------------------------------------------- api --

    def push(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Append an entry, durably; make room by dropping the oldest.  Returns its id."""
        if qos not in (0, 1, 2):
            raise LinkError(f"qos must be 0, 1 or 2, not {qos!r}")
        if len(payload) > self._max_bytes:
            raise StoreError(
                f"a {len(payload)}-byte message is larger than the whole spool "
                f"(spool.max_bytes = {self._max_bytes}); raise spool.max_bytes"
            )

        def insert(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO outbox (topic, payload, qos, retain, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (topic, payload, qos, int(retain), self._clock()),
            )
            entry_id = int(cur.lastrowid or 0)
            self._bytes += len(payload)
            self._expire_stale(db, keep=entry_id)
            self._enforce_size(db, keep=entry_id)
            return entry_id

        with self._lock:
            return self._write(insert)

    def peek(self, limit: int, *, after_id: int = 0) -> list[SpoolEntry]:
        """The oldest ``limit`` entries with ``id > after_id``, oldest first."""
        if limit <= 0:
            return []

        def select(db: sqlite3.Connection) -> list[SpoolEntry]:
            rows = db.execute(
                "SELECT id, topic, payload, qos, retain, created_at FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
            return [SpoolEntry(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

        with self._lock:
            return self._guarded(select)

    def ack(self, entry_id: int) -> None:
        """The broker has it: delete.  Acking an unknown or already-acked id is a no-op."""

        def delete(db: sqlite3.Connection) -> None:
            row = db.execute(
                "DELETE FROM outbox WHERE id = ? RETURNING LENGTH(payload)", (entry_id,)
            ).fetchone()
            if row is not None:
                self._bytes -= int(row[0])

        with self._lock:
            self._write(delete, durable=False)

    def note_replayed(self, n: int) -> None:
        """Count entries re-sent after a reconnect (they may reach the server twice)."""
        if n <= 0:
            return
        with self._lock:
            self._write(lambda db: _bump(db, "replayed", n), durable=False)

    def stats(self) -> SpoolStats:
        def read(db: sqlite3.Connection) -> SpoolStats:
            depth, oldest = db.execute("SELECT COUNT(*), MIN(created_at) FROM outbox").fetchone()
            return SpoolStats(
                depth=int(depth),
                bytes=max(0, self._bytes),
                dropped_total=_counter(db, "dropped"),
                replayed_total=_counter(db, "replayed"),
                oldest_age_s=max(0.0, self._clock() - oldest) if oldest is not None else 0.0,
            )

        with self._lock:
            return self._guarded(read)

    @property
    def corrupt_recoveries(self) -> int:
        """How many times a damaged spool file was replaced by a fresh one (ever)."""
        with self._lock:
            return self._guarded(lambda db: _counter(db, "corrupt_recoveries"))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # raised by us (quick_check) or without a code: treat as damage
        return not isinstance(exc, sqlite3.OperationalError)
    return (code & 0xFF) in _CORRUPT_CODES


def _salvage(path: Path) -> dict[str, int]:
    """Best effort: the counters of a damaged spool, with what it still held counted as dropped.

    ``dropped_total`` is promised never to go backwards, so a recovery carries
    it over whenever the damaged file still lets us read it.
    """
    found: dict[str, int] = {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return found
    try:
        with contextlib.suppress(sqlite3.Error):
            for name, value in db.execute("SELECT name, value FROM counters"):
                if isinstance(name, str) and isinstance(value, int) and value >= 0:
                    found[name] = value
        with contextlib.suppress(sqlite3.Error):
            lost = int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            found["lost"] = lost
            found["dropped"] = found.get("dropped", 0) + lost
    finally:
        db.close()
    return found


def _bump(db: sqlite3.Connection, name: str, n: int) -> None:
    db.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
        (name, n),
    )


def _count_dropped(db: sqlite3.Connection, n: int) -> None:
    if n:
        _bump(db, "dropped", n)
        log.warning("spool full or stale: dropped the %d oldest entries", n)


def _counter(db: sqlite3.Connection, name: str) -> int:
    row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


@dataclass
class DrainPolicy:
    """Token bucket plus an in-flight window: how many entries may be sent right now.

    After a long outage the backlog leaves oldest-first at ``rate_per_s`` (with
    ``burst`` headroom) and never more than ``max_inflight`` unacknowledged, so
    new batches keep being queued behind it and a fleet coming back online at
    once does not flatten the broker or the device's uplink.  ``now`` must come
    from a monotonic clock; a step backwards simply adds no tokens.
    """

    rate_per_s: float
    burst: int
    max_inflight: int
    _tokens: float = field(default=0.0, init=False, repr=False)
    _last: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0 or self.burst < 1 or self.max_inflight < 1:
            raise ConfigError(
                "drain policy needs rate_per_s > 0, burst >= 1 and max_inflight >= 1 "
                f"(got {self.rate_per_s}, {self.burst}, {self.max_inflight})"
            )

    def allowance(self, now: float, inflight: int) -> int:
        if self._last is None:
            self._tokens, self._last = float(self.burst), now
        elapsed = max(0.0, now - self._last)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
        self._last = max(self._last, now)
        allowed = int(min(self._tokens, self.max_inflight - inflight))
        if allowed <= 0:
            return 0
        self._tokens -= allowed
        return allowed
