"""Rollouts: one row per rollout, one per (rollout, device), and an event log.

The engine's state is saved as JSON next to a few columns the API filters on.
A save writes the rollout, the device rows that changed and new events in one
transaction, so a crash never leaves a rollout half-saved: a restarted server
resumes from the last complete transition.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from edgefleet_contract.errors import NotFound, StoreError

from ._conn import INTEGRITY_ERRORS, Connections
from .base import RolloutEvent, RolloutRow
from .rows import from_row, insert_sql, to_row

_ROLLOUT_COLUMNS = (
    "id",
    "status",
    "artifact",
    "created_at",
    "created_by",
    "updated_at",
    "plan",
    "state",
)


class RolloutTables(Connections):
    def save_rollout(
        self,
        row: RolloutRow,
        *,
        devices: Sequence[dict[str, Any]] = (),
        events: Sequence[RolloutEvent] = (),
        create: bool = False,
        expect_updated_at: float | None = None,
    ) -> None:
        try:
            with self._tx() as conn:
                if create:
                    conn.execute(
                        insert_sql("rollouts", _ROLLOUT_COLUMNS),
                        to_row(row, _ROLLOUT_COLUMNS, plan=json.dumps, state=json.dumps),
                    )
                else:
                    sql = "UPDATE rollouts SET status = ?, updated_at = ?, state = ? WHERE id = ?"
                    state = json.dumps(row.state)
                    args: tuple[Any, ...] = (row.status, row.updated_at, state, row.id)
                    if expect_updated_at is not None:
                        sql, args = sql + " AND updated_at = ?", (*args, expect_updated_at)
                    cur = conn.execute(sql, args)
                    if cur.rowcount == 0 and expect_updated_at is not None:
                        raise StoreError(
                            f"rollout {row.id} was changed meanwhile by another server process; "
                            "nothing was saved: reload it and try again"
                        )
                    if cur.rowcount == 0:
                        raise NotFound(f"no rollout {row.id!r}")
                conn.executemany(
                    "INSERT INTO rollout_devices (rollout_id, device_id, wave, status, body) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(rollout_id, device_id) DO UPDATE SET "
                    "wave = excluded.wave, status = excluded.status, body = excluded.body",
                    [
                        (row.id, d["device_id"], d["wave"], d["status"], json.dumps(d))
                        for d in devices
                    ],
                )
                conn.executemany(
                    "INSERT INTO rollout_events (rollout_id, ts, kind, device_id, message) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(row.id, e.ts, e.kind, e.device_id, e.message) for e in events],
                )
        except INTEGRITY_ERRORS:
            raise StoreError(f"a rollout with id {row.id!r} already exists") from None

    def get_rollout(self, rollout_id: str) -> RolloutRow:
        r = self._found(
            "SELECT * FROM rollouts WHERE id = ?", (rollout_id,), f"no rollout {rollout_id!r}"
        )
        return _row(r)

    def rollout_devices(self, rollout_id: str) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT body FROM rollout_devices WHERE rollout_id = ? ORDER BY device_id",
            (rollout_id,),
        )
        return [json.loads(r[0]) for r in rows]

    def list_rollouts(
        self, *, statuses: Sequence[str] | None = None, limit: int = 100
    ) -> list[RolloutRow]:
        sql, params = "SELECT * FROM rollouts", list[str]()
        if statuses is not None:
            sql += f" WHERE status IN ({','.join('?' * len(statuses))})"
            params.extend(statuses)
        rows = self._conn().execute(sql + " ORDER BY created_at DESC LIMIT ?", (*params, limit))
        return [_row(r) for r in rows]

    def rollout_events(self, rollout_id: str, *, limit: int = 200) -> list[RolloutEvent]:
        rows = self._conn().execute(
            "SELECT * FROM (SELECT * FROM rollout_events WHERE rollout_id = ? "
            "ORDER BY id DESC LIMIT ?) AS newest ORDER BY id",
            (rollout_id, limit),
        )
        return [from_row(RolloutEvent, r) for r in rows]


def _row(r: Any) -> RolloutRow:
    return from_row(RolloutRow, r, plan=json.loads, state=json.loads)
