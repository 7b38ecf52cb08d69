"""Devices, their twins, enrollment tokens, certificates and commands."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from edgefleet_contract.errors import EnrollmentError, NotFound, StoreError
from edgefleet_contract.messages import DesiredState, ReportedState

from . import schema
from ._conn import INTEGRITY_ERRORS, DbConn
from .base import CommandRecord, Device, DeviceFilter, Page
from .overview import OverviewTables
from .rows import device_from_row, from_row, insert_sql, sorted_json, text_or_empty, to_row

_COMMAND_COLUMNS = (
    "id",
    "device_id",
    "name",
    "args",
    "created_at",
    "actor",
    "status",
    "detail",
)


class DeviceTables(OverviewTables):
    """The device rows (a reported update is kept as history by ``note_update``)."""

    # ------------------------------------------------------------- devices --

    def create_device(self, device_id: str, *, name: str, tags: dict[str, str], now: float) -> bool:
        """A new device; a decommissioned one's id is taken over (its history stays)."""
        try:
            with self._tx() as conn:
                conn.execute(
                    "INSERT INTO devices (id, name, tags, groups, state, created_at, online, "
                    "desired_version) VALUES (?, ?, ?, '[]', 'pending', ?, 0, 0)",
                    (device_id, name, sorted_json(tags), now),
                )
                return False
        except INTEGRITY_ERRORS:
            pass
        with self._tx() as conn:
            row = conn.execute("SELECT state FROM devices WHERE id = ?", (device_id,)).fetchone()
            if row is None or row[0] != "decommissioned":
                raise StoreError(f"a device with id {device_id!r} already exists")
            # Every column but the id back to a fresh device's value.
            columns = [c.name for c in schema.devices.c]
            fresh = {
                "name": name,
                "tags": sorted_json(tags),
                "groups": "[]",
                "state": "pending",
                "created_at": now,
                "online": 0,
                "desired_version": 0,
            }
            cleared = [c for c in columns if c != "id" and c not in fresh]
            sets = [f"{c} = ?" for c in fresh] + [f"{c} = NULL" for c in cleared]
            conn.execute(
                f"UPDATE devices SET {', '.join(sets)} WHERE id = ?", (*fresh.values(), device_id)
            )
        return True

    def decommission_device(self, device_id: str) -> None:
        """Mark a revoked device decommissioned (the caller revokes it first)."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE devices SET state = 'decommissioned', online = 0 "
                "WHERE id = ? AND state = 'revoked'",
                (device_id,),
            )
            if cur.rowcount == 0:
                raise StoreError(f"device {device_id!r} is not revoked; revoke it first")

    def get_device(self, device_id: str) -> Device:
        row = self._found(
            "SELECT * FROM devices WHERE id = ?", (device_id,), f"no device {device_id!r}"
        )
        return device_from_row(row)

    def list_devices(
        self,
        *,
        where: DeviceFilter | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Page[Device]:
        """One page of devices by id; the selector is a SQL predicate, so a page costs
        an index scan and a count, not a pass over every device in Python (except a
        selector comparing versions where SQL cannot order them: ``_in_python``)."""
        if where is not None and where.versioned and not self.dialect.exact_versions:
            ids = [d.id for d in self._in_python(where)]
            chosen = ids[offset : offset + limit]
            page = [self.get_device(i) for i in chosen]
            return Page(page, len(ids))
        cond, params = where.sql(self.dialect) if where is not None else ("1 = 1", [])
        with self._snapshot() as conn:
            total = int(
                conn.execute(f"SELECT COUNT(*) FROM devices WHERE {cond}", params).fetchone()[0]
            )
            rows = conn.execute(
                f"SELECT * FROM devices WHERE {cond} ORDER BY id LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
        return Page([device_from_row(r) for r in rows], total)

    def all_devices(self, *, where: DeviceFilter | None = None) -> list[Device]:
        if where is not None and where.versioned and not self.dialect.exact_versions:
            return self._in_python(where)
        cond, params = where.sql(self.dialect) if where is not None else ("1 = 1", [])
        rows = (
            self._conn()
            .execute(f"SELECT * FROM devices WHERE {cond} ORDER BY id", params)
            .fetchall()
        )
        return [device_from_row(r, full=False) for r in rows]

    def _in_python(self, where: DeviceFilter) -> list[Device]:
        """Every device ``where.matches``, read without twins and tested in Python (the
        version order is PEP 440's, which only Python's ``packaging`` knows)."""
        rows = self._conn().execute("SELECT * FROM devices ORDER BY id").fetchall()
        return [d for d in (device_from_row(r, full=False) for r in rows) if where.matches(d)]

    def update_device(
        self,
        device_id: str,
        *,
        name: str | None = None,
        tags: dict[str, str] | None = None,
        groups: Sequence[str] | None = None,
    ) -> Device:
        sets: list[str] = []
        params: list[Any] = []
        if name is not None:
            sets.append("name = ?")
            params.append(name)
        if tags is not None:
            sets.append("tags = ?")
            params.append(sorted_json(tags))
        if groups is not None:
            sets.append("groups = ?")
            params.append(json.dumps(sorted(set(groups))))
        if sets:
            with self._tx() as conn:
                cur = conn.execute(
                    f"UPDATE devices SET {', '.join(sets)} WHERE id = ?", (*params, device_id)
                )
                if cur.rowcount == 0:
                    raise NotFound(f"no device {device_id!r}")
        return self.get_device(device_id)

    @property
    def _latest_seen(self) -> str:
        return self.dialect.greatest("COALESCE(last_seen, 0)", "?")

    def set_presence(self, device_id: str, *, online: bool, ts: float) -> None:
        with self._ingest_tx() as conn:
            conn.execute(
                f"UPDATE devices SET online = ?, last_seen = {self._latest_seen} WHERE id = ?",
                (int(online), ts, device_id),
            )

    def count_online(self) -> int:
        return int(
            self._conn().execute("SELECT COUNT(*) FROM devices WHERE online = 1").fetchone()[0]
        )

    def reset_presence(self) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE devices SET online = 0 WHERE online = 1")

    def touch_seen(self, seen: Mapping[str, float]) -> None:
        with self._ingest_tx() as conn:
            self._advance_seen(conn, seen)

    def _advance_seen(self, conn: DbConn, seen: Mapping[str, float]) -> None:
        conn.executemany(
            f"UPDATE devices SET last_seen = {self._latest_seen} WHERE id = ?",
            [(seen[device_id], device_id) for device_id in sorted(seen)],  # one lock order
        )

    def set_reported(self, device_id: str, reported: ReportedState, ts: float) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE devices SET reported = ?, reported_at = ?, model_name = ?, "
                "model_version = ?, firmware_version = ?, agent_version = ?, hardware = ?, "
                "health = ? WHERE id = ?",
                (
                    reported.model_dump_json(exclude_none=True),
                    ts,
                    reported.model.name if reported.model else None,
                    reported.model.version if reported.model else None,
                    reported.firmware.version if reported.firmware else None,
                    reported.agent_version,
                    reported.hardware,
                    reported.health,
                    device_id,
                ),
            )
            self.note_update(conn, device_id, reported, ts)

    def set_desired(self, device_id: str, desired: DesiredState) -> None:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE devices SET desired = ?, desired_version = ? "
                "WHERE id = ? AND desired_version < ?",
                (
                    desired.model_dump_json(exclude_none=True),
                    desired.version,
                    device_id,
                    desired.version,
                ),
            )
            if cur.rowcount == 0:
                self.get_device(device_id)  # NotFound if missing
                raise StoreError(
                    f"desired state version {desired.version} of {device_id!r} is not newer "
                    "than the stored one"
                )

    def next_desired_version(self, device_id: str) -> int:
        row = self._found(
            "SELECT desired_version FROM devices WHERE id = ?",
            (device_id,),
            f"no device {device_id!r}",
        )
        return int(row[0]) + 1

    # ---------------------------------------------------------- enrollment --

    def save_enrollment_token(self, device_id: str, token_hash: str, expires_at: float) -> None:
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM devices WHERE id = ?", (device_id,)).fetchone() is None:
                raise NotFound(f"no device {device_id!r}")
            conn.execute("DELETE FROM enrollment_tokens WHERE device_id = ?", (device_id,))
            conn.execute(
                "INSERT INTO enrollment_tokens (token_hash, device_id, expires_at) "
                "VALUES (?, ?, ?)",
                (token_hash, device_id, expires_at),
            )

    def take_enrollment_token(self, token_hash: str, now: float) -> str:
        with self._tx() as conn:
            row = conn.execute(
                "SELECT t.device_id, t.expires_at, t.used_at, d.state FROM enrollment_tokens t "
                "JOIN devices d ON d.id = t.device_id WHERE t.token_hash = ?",
                (token_hash,),
            ).fetchone()
            if row is None:
                raise EnrollmentError(
                    "unknown enrollment token; check it was copied whole, or ask an operator "
                    "for a new one (fleetctl devices token ID)"
                )
            if row["state"] == "revoked":
                raise EnrollmentError(
                    f"device {row['device_id']!r} is revoked and cannot enroll again"
                )
            if row["used_at"] is not None:
                raise EnrollmentError(
                    "this enrollment token was already used; ask an operator for a new one "
                    f"(fleetctl devices token {row['device_id']})"
                )
            if row["expires_at"] < now:
                raise EnrollmentError(
                    "this enrollment token has expired; ask an operator for a new one "
                    f"(fleetctl devices token {row['device_id']})"
                )
            conn.execute(
                "UPDATE enrollment_tokens SET used_at = ? WHERE token_hash = ?", (now, token_hash)
            )
            return str(row["device_id"])

    def add_certificate(self, device_id: str, serial: int, not_after: float, now: float) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO certificates (serial, device_id, not_after, issued_at) "
                "VALUES (?, ?, ?, ?)",
                (str(serial), device_id, not_after, now),
            )
            conn.execute(
                "UPDATE devices SET state = 'enrolled', enrolled_at = COALESCE(enrolled_at, ?), "
                "cert_serial = ?, cert_not_after = ? WHERE id = ? AND state != 'revoked'",
                (now, str(serial), not_after, device_id),
            )

    def revoke_device(self, device_id: str, now: float) -> list[int]:
        with self._tx() as conn:
            cur = conn.execute("UPDATE devices SET state = 'revoked' WHERE id = ?", (device_id,))
            if cur.rowcount == 0:
                raise NotFound(f"no device {device_id!r}")
            conn.execute(
                "UPDATE certificates SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
                (now, device_id),
            )
            conn.execute("DELETE FROM enrollment_tokens WHERE device_id = ?", (device_id,))
            rows = conn.execute(
                "SELECT serial FROM certificates WHERE device_id = ?", (device_id,)
            ).fetchall()
        return [int(r[0]) for r in rows]

    def supersede_certificates(self, device_id: str, keep: int, now: float) -> list[int]:
        """Revoke every unrevoked certificate of ``device_id`` but ``keep`` (after a renewal)."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT serial FROM certificates WHERE device_id = ? AND serial != ? "
                "AND revoked_at IS NULL",
                (device_id, str(keep)),
            ).fetchall()
            conn.execute(
                "UPDATE certificates SET revoked_at = ? WHERE device_id = ? AND serial != ? "
                "AND revoked_at IS NULL",
                (now, device_id, str(keep)),
            )
        return [int(r[0]) for r in rows]

    def revoked_serials(self) -> list[tuple[int, float]]:
        rows = (
            self._conn()
            .execute("SELECT serial, revoked_at FROM certificates WHERE revoked_at IS NOT NULL")
            .fetchall()
        )
        return [(int(r[0]), float(r[1])) for r in rows]

    def is_revoked(self, device_id: str) -> bool:
        row = self._one("SELECT state FROM devices WHERE id = ?", (device_id,))
        return row is not None and row[0] == "revoked"

    # ------------------------------------------------------------ commands --

    def add_command(self, command: CommandRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                insert_sql("commands", _COMMAND_COLUMNS),
                to_row(command, _COMMAND_COLUMNS, args=json.dumps),
            )

    def ack_command(
        self, command_id: str, *, device_id: str, status: str, detail: str, ts: float
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE commands SET status = ?, detail = ?, acked_at = ? "
                "WHERE id = ? AND device_id = ?",
                (status, detail, ts, command_id, device_id),
            )

    def list_commands(self, device_id: str, *, limit: int = 50) -> list[CommandRecord]:
        rows = (
            self._conn()
            .execute(
                "SELECT * FROM commands WHERE device_id = ? ORDER BY created_at DESC LIMIT ?",
                (device_id, limit),
            )
            .fetchall()
        )
        return [from_row(CommandRecord, r, args=json.loads, detail=text_or_empty) for r in rows]
