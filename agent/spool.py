"""The store-and-forward outbox: SQLite, bounded, FIFO, survives kill -9 and reboots.

Every must-arrive message is inserted here before it is sent and deleted only
when the broker acknowledged it.  Bounds are by total bytes and by age; when a
bound is hit the *oldest* entries go first and are counted in a persistent
counter, which the device reports (``SpoolStats.dropped_total``) so the loss
is visible on the server rather than silent.

Durability: WAL with ``synchronous=FULL`` — each push is on disk when it
returns, so neither ``kill -9`` nor a power cut loses an accepted entry.  At
one telemetry batch every few seconds the fsync cost is irrelevant.

A file that SQLite cannot read is moved aside (``spool.db.corrupt-<ts>``) and
a fresh spool started, so a damaged SD card sector cannot keep the agent down.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgefleet_contract.messages import SpoolStats

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class SpoolEntry:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_at: float


class Spool:
    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._max_age = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()
        self._bytes = int(
            self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()[0]
        )

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(self._clock())}")
            log.error("spool %s is unreadable (%s); moved to %s", self.path, exc, aside)
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            db = self._connect()
            self._bump(db, "corrupt_recoveries", 1)
            return db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    @staticmethod
    def _bump(db: sqlite3.Connection, name: str, n: int) -> None:
        db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ api --

    def push(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Append an entry (durably); enforce the bounds by dropping the oldest."""
        now = self._clock()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = db.execute(
                    "INSERT INTO outbox (topic, payload, qos, retain, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (topic, payload, qos, int(retain), now),
                )
                entry_id = int(cur.lastrowid or 0)
                self._bytes += len(payload)
                self._enforce_bounds(now, keep=entry_id)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._bytes = self._sum_bytes()
                raise
            return entry_id

    def _enforce_bounds(self, now: float, *, keep: int) -> None:
        db = self._db
        dropped = db.execute(
            "DELETE FROM outbox WHERE created_at < ? AND id != ? RETURNING LENGTH(payload)",
            (now - self._max_age, keep),
        ).fetchall()
        while self._bytes - sum(r[0] for r in dropped) > self._max_bytes:
            row = db.execute(
                "DELETE FROM outbox WHERE id = (SELECT MIN(id) FROM outbox WHERE id != ?) "
                "RETURNING LENGTH(payload)",
                (keep,),
            ).fetchone()
            if row is None:
                break
            dropped.append(row)
        if dropped:
            self._bytes -= sum(r[0] for r in dropped)
            self._bump(db, "dropped", len(dropped))
            log.warning("spool full or stale: dropped %d oldest entries", len(dropped))

    def _sum_bytes(self) -> int:
        return int(
            self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()[0]
        )

    def peek(self, limit: int, *, after_id: int = 0) -> list[SpoolEntry]:
        """The oldest ``limit`` entries with ``id > after_id``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain, created_at FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [SpoolEntry(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def ack(self, entry_id: int) -> None:
        """The broker has it: delete (idempotent)."""
        with self._lock:
            row = self._db.execute(
                "DELETE FROM outbox WHERE id = ? RETURNING LENGTH(payload)", (entry_id,)
            ).fetchone()
            if row is not None:
                self._bytes -= int(row[0])

    def note_replayed(self, n: int) -> None:
        with self._lock:
            self._bump(self._db, "replayed", n)

    def stats(self) -> SpoolStats:
        with self._lock:
            depth, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(created_at) FROM outbox"
            ).fetchone()
            return SpoolStats(
                depth=int(depth),
                bytes=max(0, self._bytes),
                dropped_total=self._counter("dropped"),
                replayed_total=self._counter("replayed"),
                oldest_age_s=max(0.0, self._clock() - oldest) if oldest is not None else 0.0,
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class DrainPolicy:
    """Token bucket plus an in-flight window: how many entries may be sent right now.

    After a long outage the backlog leaves at ``rate_per_s`` (with ``burst``
    headroom) and never more than ``max_inflight`` unacknowledged, so a fleet
    coming back online does not flatten the broker or the device's uplink.
    """

    rate_per_s: float
    burst: int
    max_inflight: int
    _tokens: float = -1.0
    _last: float | None = None

    def allowance(self, now: float, inflight: int) -> int:
        if self._last is None:
            self._tokens, self._last = float(self.burst), now
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate_per_s)
        self._last = now
        allowed = int(min(self._tokens, self.max_inflight - inflight))
        if allowed <= 0:
            return 0
        self._tokens -= allowed
        return allowed
