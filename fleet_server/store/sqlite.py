"""The SQLite backend of :class:`~fleet_server.store.base.Store` (the embedded default).

WAL mode so the API reads while the ingest writer writes; ``synchronous=NORMAL``
(durable across process crashes, which is what QoS 1 acks after commit need; a
power cut may lose the last transactions, which the broker then redelivers
because they were never acknowledged).  One connection per thread; SQLite
serialises writers and ``busy_timeout`` makes them wait instead of failing.
The selector language's glob and version comparison are registered as SQL
functions (Python's own, so SQL and ``Selector.matches`` agree exactly).
"""

from __future__ import annotations

import fnmatch
import sqlite3
import threading
from pathlib import Path

from edgefleet_common.private import private_file

from ..version_order import version_cmp
from . import migrations
from .accounts import AccountTables
from .artifacts import ArtifactTables
from .devices import DeviceTables
from .rollouts import RolloutTables
from .telemetry import TelemetryTables
from .training import TrainingTables


class SqliteStore(
    TelemetryTables,
    AccountTables,
    TrainingTables,
    ArtifactTables,
    RolloutTables,
    DeviceTables,
):
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private_file(self.path)  # password and token hashes, the audit trail
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._conn().execute("PRAGMA journal_mode = WAL")
        _, self._version = migrations.upgrade_url(str(self.path))

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.create_function("fleet_glob", 2, _glob, deterministic=True)
            conn.create_function("fleet_version_cmp", 2, version_cmp, deterministic=True)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def schema_version(self) -> int:
        return self._version

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


def _glob(value: str | None, pattern: str) -> bool | None:
    return None if value is None else fnmatch.fnmatchcase(value, pattern)
