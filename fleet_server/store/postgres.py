"""The PostgreSQL backend of :class:`~fleet_server.store.base.Store` (psycopg 3).

The same queries as SQLite (``_conn.py`` rewrites placeholders), on one
autocommit connection per thread with explicit transactions.  Writers other
than telemetry are serialised by a transaction-level advisory lock, as SQLite's
``BEGIN IMMEDIATE`` serialises them, so the read-then-write steps (enrollment
tokens, artifact registration) keep their meaning under READ COMMITTED.
Telemetry is written without that lock: one statement per call (the new batch
ids by ``INSERT … ON CONFLICT DO NOTHING RETURNING``, those batches' rows, their
rollup upserts in key order and the devices' last-seen times, as data-modifying
``WITH`` parts), so several ingest workers write at once without deadlocks, and
an ingest batch costs one pipelined round trip from BEGIN to COMMIT.  Raw telemetry and
rollups are partitioned by day (``partitions.py``) and retention drops whole
partitions.  A connection PostgreSQL dropped (a restart) is replaced on the
next call; the call that saw it fail raises, so ingest retries without acking.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.rows import RowMaker, tuple_row
from sqlalchemy import Integer

from edgefleet_contract.messages import Telemetry

from . import migrations
from ._conn import Cursor, DbConn, PgDialect, pg_sql
from .partitions import Partitions
from .pgconnect import check_rights, connect, describe
from .rows import drift_status_values, rollup_values, telemetry_row
from .schema import ROLLUP_COLUMNS, RollupColumn
from .tables import StoreTables
from .telemetry import DRIFT_UPSERT, rollup_upsert

_WRITE_LOCK = 7305101
"""Advisory lock key serialising the store's non-telemetry writers."""

# psycopg's own syntax (PgConn.native): arrays sent binary, one fixed text per statement.
_SEEN_SQL = (
    "UPDATE devices SET last_seen = GREATEST(COALESCE(devices.last_seen, 0), s.ts) "
    "FROM unnest(%b::text[], %b::float8[]) AS s(id, ts) WHERE devices.id = s.id"
)


def _array(c: RollupColumn) -> str:
    return "%b::bigint[]" if c.kind is Integer else "%b::float8[]"


@lru_cache(maxsize=1)
def _telemetry_sql(dialect: PgDialect) -> str:
    """One statement for a whole ingest batch, so its transaction is one round trip.

    ``k`` stores the batch ids not stored yet (in key order: concurrent workers lock
    in one order) and returns them; the raw rows and the rollup contributions of just
    those batches follow it (summed or maxed per (device, minute) as
    ``merged_rollups`` merges them, in key order), and the devices' last-seen times
    advance beside them.  The result is the new ids."""
    names = [c.name for c in ROLLUP_COLUMNS]
    merged = [f"{c.merge.upper()}(i.{c.name})" for c in ROLLUP_COLUMNS]
    upsert = rollup_upsert(dialect)
    on_conflict = upsert[upsert.index("ON CONFLICT") :]
    arrays = ", ".join(
        ["%b::text[]", "%b::text[]", "%b::bigint[]", "%b::float8[]", "%b::text[]"]
        + ["%b::float8[]"]
        + [_array(c) for c in ROLLUP_COLUMNS]
    )
    return (
        "WITH i AS MATERIALIZED (SELECT b.*, %b::float8 AS received_at FROM unnest("
        f"{arrays}) AS b(device_id, batch_id, seq, ts, body, minute, {', '.join(names)})), "
        "k AS (INSERT INTO telemetry_keys (device_id, batch_id, received_at) "
        "SELECT device_id, batch_id, received_at FROM i "
        "ON CONFLICT DO NOTHING RETURNING device_id, batch_id), "
        "r AS (INSERT INTO telemetry (device_id, batch_id, seq, ts, received_at, body) "
        "SELECT i.device_id, i.batch_id, i.seq, i.ts, i.received_at, i.body "
        "FROM i JOIN k USING (device_id, batch_id)), "
        f"u AS (INSERT INTO rollups (device_id, minute, {', '.join(names)}) "
        f"SELECT i.device_id, i.minute, {', '.join(merged)} "
        "FROM i JOIN k USING (device_id, batch_id) GROUP BY i.device_id, i.minute "
        f"ORDER BY i.device_id, i.minute {on_conflict}), "
        f"seen AS ({_SEEN_SQL}) "
        "SELECT device_id, batch_id FROM k"
    )


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
    """A psycopg connection speaking the store's ``?`` placeholders.

    A statement outside a transaction that finds the connection dropped (PostgreSQL
    restarted) reconnects and runs once more; inside a transaction the error goes to
    the caller, whose transaction is lost either way."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Row]]) -> None:
        self._connect = connect
        self.raw = connect()
        self.in_tx = False

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        try:
            return self._execute(sql, parameters)
        except psycopg.OperationalError:
            if self.in_tx or not self.raw.broken:
                raise
            self.raw.close()
            self.raw = self._connect()
            return self._execute(sql, parameters)

    def revive(self) -> None:
        """Replace the connection if PostgreSQL closed it while idle (a restart: the
        socket reads as ready though nothing was asked).  A local check, no round trip."""
        ready, _, _ = select.select([self.raw.fileno()], [], [], 0)
        if ready:
            self.raw.close()
            self.raw = self._connect()

    def native(self, sql: str, parameters: Sequence[Any]) -> Cursor:
        """psycopg's own placeholders (``%b``: binary, no text escaping of big arrays);
        plain tuples for rows (read by position: no per-row name map to build)."""
        cur = self.raw.cursor(row_factory=tuple_row)
        cur.execute(sql, parameters)
        return cur

    def _execute(self, sql: str, parameters: Any) -> Cursor:
        cur = self.raw.cursor()
        cur.execute(pg_sql(sql), parameters)
        return cur

    def executemany(self, sql: str, parameters: Any, /) -> Cursor:
        cur = self.raw.cursor()
        cur.executemany(pg_sql(sql), list(parameters))
        return cur


class PgStore(StoreTables):
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
            conn = PgConn(lambda: connect(self.dsn, autocommit=True, row_factory=_row_factory))
            self._local.conn = conn
            with self._lock:
                self._all = [c for c in self._all if not c.raw.closed]
                self._all.append(conn)
        return conn

    def _autocommit(self) -> DbConn:
        return self._conn()

    @contextmanager
    def _begin(self, begin: str, *setup: str, pipelined: bool = False) -> Iterator[DbConn]:
        """One transaction.  ``pipelined``: from BEGIN to COMMIT the statements go out
        without waiting for each other; a BEGIN in a pipeline cannot be retried alone,
        so a connection PostgreSQL closed meanwhile is replaced first (``revive``)."""
        conn = self._conn()
        if pipelined:
            conn.revive()
        else:
            conn.execute(begin)  # may reconnect: nothing of this transaction is lost yet
        conn.in_tx = True
        try:
            with conn.raw.pipeline() if pipelined else nullcontext():
                if pipelined:
                    conn.execute(begin)
                for sql in setup:
                    conn.execute(sql)
                yield conn
                conn.execute("COMMIT")
        except BaseException:
            if not conn.raw.broken:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.in_tx = False

    @contextmanager
    def _tx(self) -> Iterator[DbConn]:
        with self._begin("BEGIN", f"SELECT pg_advisory_xact_lock({_WRITE_LOCK})") as conn:
            yield conn

    @contextmanager
    def _ingest_tx(self) -> Iterator[DbConn]:
        """Pipelined: BEGIN, the telemetry statement and COMMIT go out together."""
        with self._begin("BEGIN", pipelined=True) as conn:
            yield conn

    @contextmanager
    def _snapshot(self) -> Iterator[DbConn]:
        with self._begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") as conn:
            yield conn

    # ----------------------------------------------------------- telemetry --

    def _make_room(self, batches: Sequence[Telemetry], received_at: float) -> None:
        self.partitions.cover([b.ts for b in batches], now=received_at)

    def insert_telemetry(
        self,
        batches: Sequence[Telemetry],
        *,
        received_at: float,
        seen: Mapping[str, float] | None = None,
    ) -> int:
        """One transaction of one round trip (``_telemetry_sql``); a second one only when
        a batch carries a drift report, whose upsert must know which batches were new."""
        if not batches:
            return 0
        self._make_room(batches, received_at)
        chunk = _once_each(batches)
        params = _telemetry_params(chunk, received_at, seen or {})
        drift = [((b.device_id, b.batch_id), d) for b in chunk if (d := drift_status_values(b))]
        with self._ingest_tx() as conn:
            cur = self._conn().native(_telemetry_sql(self.dialect), params)
            if drift:
                new = _keys(cur.fetchall())
                rows = [d for key, d in drift if key in new]
                conn.executemany(DRIFT_UPSERT, sorted(rows, key=lambda d: d["device_id"]))
        if not drift:
            new = _keys(cur.fetchall())
        return len(new)

    def _advance_seen(self, conn: DbConn, seen: Mapping[str, float]) -> None:
        """One statement over two arrays, whatever the number of devices."""
        ids = sorted(seen)
        self._conn().native(_SEEN_SQL, [ids, [float(seen[d]) for d in ids]])

    def _chosen(self, conn: DbConn, device_ids: Sequence[str]) -> tuple[str, list[Any]]:
        """One array parameter (a temporary table has no statistics: bad plans)."""
        return "device_id = ANY(?)", [list(device_ids)]

    def prune(self, now: float, *, raw_retention_s: float, rollup_retention_s: float) -> int:
        """Drop the day partitions wholly past retention, then delete what is left over
        from the partially expired ones (and the default partition)."""
        dropped = self.partitions.drop_before(
            {"telemetry": now - raw_retention_s, "rollups": now - rollup_retention_s}
        )
        return dropped + super().prune(
            now, raw_retention_s=raw_retention_s, rollup_retention_s=rollup_retention_s
        )


def _once_each(batches: Sequence[Telemetry]) -> list[Telemetry]:
    """The first of each (device, batch id) in key order: one statement cannot insert a
    key twice, and a batch redelivered within one call is stored once."""
    first: dict[tuple[str, str], Telemetry] = {}
    for b in batches:
        first.setdefault((b.device_id, b.batch_id), b)
    return [first[k] for k in sorted(first)]


def _telemetry_params(
    chunk: Sequence[Telemetry], received_at: float, seen: Mapping[str, float]
) -> list[Any]:
    """``_telemetry_sql``'s parameters: one array per column, typed for the binary dump."""
    raw = [telemetry_row(b, received_at) for b in chunk]
    roll = [rollup_values(b) for b in chunk]
    params: list[Any] = [float(received_at)]
    params += [[r[0] for r in raw], [r[1] for r in raw], [r[2] for r in raw]]
    params += [[r[3] for r in raw], [r[5] for r in raw], [float(r[1]) for r in roll]]
    params.append([1] * len(chunk))  # batches
    for i, col in enumerate(ROLLUP_COLUMNS[1:], start=2):
        cast = int if col.kind is Integer else float
        params.append([None if r[i] is None else cast(r[i]) for r in roll])
    ids = sorted(seen)
    return [*params, ids, [float(seen[d]) for d in ids]]


def _keys(rows: Sequence[tuple[Any, ...]]) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in rows}
