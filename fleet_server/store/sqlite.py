"""The SQLite backend of :class:`~fleet_server.store.base.Store` (the embedded default).

WAL mode so the API reads while the ingest writer writes; ``synchronous=NORMAL``
(durable across process crashes, which is what QoS 1 acks after commit need; a
power cut may lose the last transactions, which the broker then redelivers
because they were never acknowledged).  One connection per thread; SQLite
serialises writers and ``busy_timeout`` makes them wait instead of failing.
The selector language's glob and version comparison are registered as SQL
functions (Python's own, so SQL and ``Selector.matches`` agree exactly).

Every statement runs to completion before its rows are handed out
(:class:`SqliteConn`): an SQLite statement that has not finished holds its read
snapshot, so one half-read cursor kept alive (a traceback's frame is enough)
would make every later read on that thread's connection see the database as it
was, a revoked session still valid and a new one unknown.
"""

from __future__ import annotations

import fnmatch
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgefleet_common.private import private_file

from ..version_order import version_cmp
from . import migrations
from .tables import StoreTables


class SqliteStore(StoreTables):
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private_file(self.path)  # password and token hashes, the audit trail
        self._local = threading.local()
        self._all: list[SqliteConn] = []
        self._lock = threading.Lock()
        self._conn().execute("PRAGMA journal_mode = WAL")
        _, self._version = migrations.upgrade_url(str(self.path))

    def _conn(self) -> SqliteConn:
        conn: SqliteConn | None = getattr(self._local, "conn", None)
        if conn is None:
            raw = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            raw.execute("PRAGMA busy_timeout = 10000")
            raw.execute("PRAGMA synchronous = NORMAL")
            raw.execute("PRAGMA foreign_keys = ON")
            raw.create_function("fleet_glob", 2, _glob, deterministic=True)
            raw.create_function("fleet_version_cmp", 2, version_cmp, deterministic=True)
            raw.row_factory = sqlite3.Row
            conn = SqliteConn(raw)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn


class Rows:
    """A finished statement's rows and row count (what the store reads of a cursor)."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = iter(rows)
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return next(self._rows, None)

    def fetchall(self) -> list[Any]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Any]:
        return self._rows


class SqliteConn:
    """An ``sqlite3`` connection whose statements finish before they return.

    The rows are read and the cursor closed at once, so no statement (and no read
    snapshot) outlives the call that ran it; see the module docstring.
    """

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Any = (), /) -> Rows:
        cur = self.raw.execute(sql, parameters)
        try:
            return Rows(cur.fetchall(), cur.rowcount)
        finally:
            cur.close()

    def executemany(self, sql: str, parameters: Any, /) -> Rows:
        cur = self.raw.executemany(sql, parameters)
        try:
            return Rows(cur.fetchall(), cur.rowcount)
        finally:
            cur.close()


def _glob(value: str | None, pattern: str) -> bool | None:
    return None if value is None else fnmatch.fnmatchcase(value, pattern)
