"""Day partitions of PostgreSQL's raw telemetry and rollups, and retention by dropping them.

``telemetry`` is range-partitioned on the batch's ``ts``, ``rollups`` on
``minute``; each has a DEFAULT partition (created with the schema) that takes
rows no day partition covers: a device whose clock is far off, or a day that
could not be created.  Day partitions are made ahead of time (yesterday to two
days ahead, at open and at every retention pass) and on demand for a batch
within a few days of now.  Retention drops every day partition whose whole day
is past the cut-off: a catalogue operation, not a scan, however many rows it
held.  What remains past the cut-off (in partly expired days and the default
partition) the ordinary ``DELETE`` removes.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping

import psycopg

from ._conn import DbConn
from .schema import PARTITIONED

log = logging.getLogger(__name__)

DAY = 86400
_NAME = re.compile(r"^(telemetry|rollups)_d(\d+)$")
_ON_DEMAND_DAYS = 3
"""A batch this many days around now gets its own day partition on demand."""


class Partitions:
    def __init__(self, conn: Callable[[], DbConn]) -> None:
        self._conn = conn
        self._known: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def prepare(self, now: float | None = None) -> None:
        """Yesterday's to the day after tomorrow's partitions, and what exists already."""
        now = time.time() if now is None else now
        with self._lock:
            self._known |= set(self._existing())
        today = int(now // DAY)
        self._ensure(range(today - 1, today + 3))

    def cover(self, stamps: Iterable[float], *, now: float) -> None:
        """Make sure the days of ``stamps`` near ``now`` have partitions before an insert."""
        today = int(now // DAY)
        days = {int(ts // DAY) for ts in stamps}
        near = [d for d in days if abs(d - today) <= _ON_DEMAND_DAYS]
        if any((t, d) not in self._known for d in near for t in PARTITIONED):
            self._ensure(near)

    def _existing(self) -> list[tuple[str, int]]:
        rows = (
            self._conn()
            .execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname IN ('telemetry', 'rollups')"
            )
            .fetchall()
        )
        out = []
        for (name,) in rows:
            m = _NAME.match(name)
            if m:
                out.append((m.group(1), int(m.group(2))))
        return out

    def _ensure(self, days: Iterable[int]) -> None:
        for day in days:
            for table in PARTITIONED:
                if (table, day) in self._known:
                    continue
                self._create(table, day)
                with self._lock:
                    self._known.add((table, day))

    def _create(self, table: str, day: int) -> None:
        start, end = day * DAY, (day + 1) * DAY
        try:
            self._conn().execute(
                f"CREATE TABLE IF NOT EXISTS {table}_d{day} PARTITION OF {table} "
                f"FOR VALUES FROM ({start}) TO ({end})"
            )
        except psycopg.errors.CheckViolation:
            # The default partition already holds rows of that day: they stay there.
            log.warning("day %d of %s stays in the default partition (it has rows)", day, table)
        except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
            pass  # another replica made it first

    def drop_before(self, cutoffs: Mapping[str, float]) -> int:
        """Drop each table's day partitions that end at or before its cut-off; the rows
        they held (counted before the drop)."""
        removed = 0
        conn = self._conn()
        for table, day in sorted(self._existing()):
            if (day + 1) * DAY > cutoffs[table]:
                continue
            name = f"{table}_d{day}"
            removed += int(conn.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0])
            conn.execute(f"DROP TABLE IF EXISTS {name}")
            with self._lock:
                self._known.discard((table, day))
        return removed
