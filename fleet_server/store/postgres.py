"""The PostgreSQL backend of :class:`~fleet_server.store.base.Store` (psycopg 3).

The same queries as SQLite (``_conn.py`` rewrites placeholders), on one
autocommit connection per thread with explicit transactions.  Writers other
than telemetry are serialised by a transaction-level advisory lock, as SQLite's
``BEGIN IMMEDIATE`` serialises them, so the read-then-write steps (enrollment
tokens, artifact registration) keep their meaning under READ COMMITTED.
Telemetry is written without that lock: one multi-row ``INSERT … ON CONFLICT
DO NOTHING RETURNING`` per call, then the rollup upserts in key order, so
several ingest workers write at once without deadlocks.  Raw telemetry and
rollups are partitioned by day (``partitions.py``) and retention drops whole
partitions.  A connection PostgreSQL dropped (a restart) is replaced on the
next call; the call that saw it fail raises, so ingest retries without acking.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import RowMaker

from edgefleet_contract.messages import Telemetry

from . import migrations
from ._conn import Cursor, DbConn, PgDialect, pg_sql
from .accounts import AccountTables
from .artifacts import ArtifactTables
from .devices import DeviceTables
from .partitions import Partitions
from .pgconnect import check_rights, connect, describe
from .rollouts import RolloutTables
from .rows import telemetry_row
from .telemetry import TelemetryTables, rollup_upsert
from .training import TrainingTables

_CHUNK = 2000
"""Batches per multi-row insert (PostgreSQL takes at most 65,535 parameters)."""
_WRITE_LOCK = 7305101
"""Advisory lock key serialising the store's non-telemetry writers."""


class Row(tuple[Any, ...]):
    """A result row readable by position and by column name (as ``sqlite3.Row``)."""

    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    names = {c.name: i for i, c in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> Row:
        row = Row(values)
        row._names = names
        return row

    return make


class PgConn:
    """A psycopg connection speaking the store's ``?`` placeholders."""

    def __init__(self, raw: psycopg.Connection[Row]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        cur = self.raw.cursor()
        cur.execute(pg_sql(sql), parameters)
        return cur

    def executemany(self, sql: str, parameters: Any, /) -> Cursor:
        cur = self.raw.cursor()
        cur.executemany(pg_sql(sql), list(parameters))
        return cur


class PgStore(
    TelemetryTables,
    AccountTables,
    TrainingTables,
    ArtifactTables,
    RolloutTables,
    DeviceTables,
):
    dialect = PgDialect()

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.where = describe(dsn)
        self._local = threading.local()
        self._all: list[PgConn] = []
        self._lock = threading.Lock()
        _, self._version = migrations.upgrade_url(dsn)
        check_rights(self._conn(), self.where)
        self.partitions = Partitions(self._autocommit)
        self.partitions.prepare()

    # ------------------------------------------------------------ plumbing --

    def _conn(self) -> PgConn:
        conn: PgConn | None = getattr(self._local, "conn", None)
        if conn is None or conn.raw.closed or conn.raw.broken:
            raw = connect(self.dsn, autocommit=True, row_factory=_row_factory)
            conn = PgConn(raw)
            self._local.conn = conn
            with self._lock:
                self._all = [c for c in self._all if not c.raw.closed]
                self._all.append(conn)
        return conn

    def _autocommit(self) -> DbConn:
        return self._conn()

    @contextmanager
    def _begin(self, begin: str, *setup: str) -> Iterator[DbConn]:
        conn = self._conn()
        conn.execute(begin)
        try:
            for sql in setup:
                conn.execute(sql)
            yield conn
        except BaseException:
            if not conn.raw.broken:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _tx(self) -> Iterator[DbConn]:
        with self._begin("BEGIN", f"SELECT pg_advisory_xact_lock({_WRITE_LOCK})") as conn:
            yield conn

    @contextmanager
    def _ingest_tx(self) -> Iterator[DbConn]:
        """Pipelined: the statements go out without waiting for each other, so a batch
        costs two round trips (the ids' RETURNING, then the rest with the COMMIT)."""
        with self._conn().raw.pipeline(), self._begin("BEGIN") as conn:
            yield conn

    @contextmanager
    def _snapshot(self) -> Iterator[DbConn]:
        with self._begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") as conn:
            yield conn

    def schema_version(self) -> int:
        return self._version

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.raw.close()
            self._all.clear()
        self._local = threading.local()

    # ----------------------------------------------------------- telemetry --

    def insert_telemetry(self, batches: Sequence[Telemetry], *, received_at: float) -> int:
        if batches:
            self.partitions.cover([b.ts for b in batches], now=received_at)
        return super().insert_telemetry(batches, received_at=received_at)

    def _insert_raw(
        self, conn: DbConn, batches: Sequence[Telemetry], received_at: float
    ) -> list[Telemetry]:
        """Multi-row inserts: the batch ids first (those new come back by RETURNING, in
        key order so concurrent workers lock in one order), then those batches' rows."""
        fresh: list[Telemetry] = []
        for start in range(0, len(batches), _CHUNK):
            chunk = sorted(batches[start : start + _CHUNK], key=lambda b: (b.device_id, b.batch_id))
            keys = [(b.device_id, b.batch_id, received_at) for b in chunk]
            new = {
                (r[0], r[1])
                for r in conn.execute(
                    "INSERT INTO telemetry_keys (device_id, batch_id, received_at) VALUES "
                    + ", ".join(["(?, ?, ?)"] * len(keys))
                    + " ON CONFLICT DO NOTHING RETURNING device_id, batch_id",
                    [v for k in keys for v in k],
                ).fetchall()
            }
            mine: list[Telemetry] = []
            for b in chunk:
                if (b.device_id, b.batch_id) in new:
                    new.discard((b.device_id, b.batch_id))  # twice in one call: stored once
                    mine.append(b)
            if mine:
                rows = [telemetry_row(b, received_at) for b in mine]
                conn.execute(
                    "INSERT INTO telemetry (device_id, batch_id, seq, ts, received_at, body) "
                    "VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(rows)),
                    [v for row in rows for v in row],
                )
            fresh.extend(mine)
        return fresh

    def _upsert_rollups(self, conn: DbConn, rows: list[tuple[Any, ...]]) -> None:
        """One statement for all of a call's minutes (their keys differ)."""
        for start in range(0, len(rows), _CHUNK // 10):
            chunk = rows[start : start + _CHUNK // 10]
            conn.execute(rollup_upsert(self.dialect, len(chunk)), [v for r in chunk for v in r])

    def prune(self, now: float, *, raw_retention_s: float, rollup_retention_s: float) -> int:
        """Drop the day partitions wholly past retention, then delete what is left over
        from the partially expired ones (and the default partition)."""
        dropped = self.partitions.drop_before(
            {"telemetry": now - raw_retention_s, "rollups": now - rollup_retention_s}
        )
        return dropped + super().prune(
            now, raw_retention_s=raw_retention_s, rollup_retention_s=rollup_retention_s
        )
