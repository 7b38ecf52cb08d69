"""The SQLite implementation of :class:`~fleet_server.store.base.Store`.

WAL mode so the API reads while the ingest writer writes; ``synchronous=NORMAL``
(durable across process crashes, which is what QoS 1 acks after commit need; a
power cut may lose the last transactions, which the broker then redelivers
because they were never acknowledged).  One connection per thread; SQLite
serialises writers and ``busy_timeout`` makes them wait instead of failing.
The telemetry hot path uses prepared ``executemany``; sqlite-utils builds the
schema.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from edgefleet_contract.errors import EnrollmentError, NotFound, StoreError
from edgefleet_contract.messages import DesiredState, ReportedState, Telemetry

from .base import ApiToken, AuditEntry, CommandRecord, Device, Page, Role, RollupRow, User
from .migrations import migrate
from .rows import device_from_row, rollup_values, telemetry_row

_ROLLUP_UPSERT = """
INSERT INTO rollups (device_id, minute, batches, inferences, errors, latency_p95_sum, latency_n,
    latency_p99_max, cpu_sum, mem_sum, rss_sum, system_n, drift_max, feedback_count,
    feedback_correct, readings, spool_dropped)
VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(device_id, minute) DO UPDATE SET
    batches = batches + 1,
    inferences = inferences + excluded.inferences,
    errors = errors + excluded.errors,
    latency_p95_sum = latency_p95_sum + excluded.latency_p95_sum,
    latency_n = latency_n + excluded.latency_n,
    latency_p99_max = MAX(latency_p99_max, excluded.latency_p99_max),
    cpu_sum = cpu_sum + excluded.cpu_sum,
    mem_sum = mem_sum + excluded.mem_sum,
    rss_sum = rss_sum + excluded.rss_sum,
    system_n = system_n + excluded.system_n,
    drift_max = MAX(drift_max, excluded.drift_max),
    feedback_count = feedback_count + excluded.feedback_count,
    feedback_correct = feedback_correct + excluded.feedback_correct,
    readings = readings + excluded.readings,
    spool_dropped = MAX(spool_dropped, excluded.spool_dropped)
"""


class SqliteStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        db = sqlite_utils.Database(self._conn())
        db.enable_wal()
        self._version = migrate(db)

    # ------------------------------------------------------------ plumbing --

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn().execute(sql, params).fetchone()
        return row

    def schema_version(self) -> int:
        return self._version

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    # ------------------------------------------------------------- devices --

    def create_device(self, device_id: str, *, name: str, tags: dict[str, str], now: float) -> None:
        try:
            with self._tx() as conn:
                conn.execute(
                    "INSERT INTO devices (id, name, tags, groups, state, created_at, online, "
                    "desired_version) VALUES (?, ?, ?, '[]', 'pending', ?, 0, 0)",
                    (device_id, name, json.dumps(tags, sort_keys=True), now),
                )
        except sqlite3.IntegrityError:
            raise StoreError(f"a device with id {device_id!r} already exists") from None

    def get_device(self, device_id: str) -> Device:
        row = self._one("SELECT * FROM devices WHERE id = ?", (device_id,))
        if row is None:
            raise NotFound(f"no device {device_id!r}")
        return device_from_row(row)

    def list_devices(
        self,
        *,
        where: Callable[[Device], bool] | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Page[Device]:
        conn = self._conn()
        if where is None:
            total = int(conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0])
            rows = conn.execute(
                "SELECT * FROM devices ORDER BY id LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
            return Page([device_from_row(r) for r in rows], total)
        every = conn.execute("SELECT * FROM devices ORDER BY id")
        matched = [d.id for d in (device_from_row(r, full=False) for r in every) if where(d)]
        page = matched[offset : offset + limit]
        if not page:
            return Page([], len(matched))
        marks = ",".join("?" * len(page))
        chosen = conn.execute(f"SELECT * FROM devices WHERE id IN ({marks}) ORDER BY id", page)
        return Page([device_from_row(r) for r in chosen], len(matched))

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
            params.append(json.dumps(tags, sort_keys=True))
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

    def set_presence(self, device_id: str, *, online: bool, ts: float) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE devices SET online = ?, last_seen = MAX(COALESCE(last_seen, 0), ?) "
                "WHERE id = ?",
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
        with self._tx() as conn:
            conn.executemany(
                "UPDATE devices SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE id = ?",
                [(ts, device_id) for device_id, ts in seen.items()],
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
        row = self._one("SELECT desired_version FROM devices WHERE id = ?", (device_id,))
        if row is None:
            raise NotFound(f"no device {device_id!r}")
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

    # ----------------------------------------------------------- telemetry --

    def insert_telemetry(self, batches: Sequence[Telemetry], *, received_at: float) -> int:
        if not batches:
            return 0
        with self._tx() as conn:
            inserted = 0
            fresh: list[Telemetry] = []
            for batch in batches:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO telemetry (device_id, batch_id, seq, ts, received_at, "
                    "body) VALUES (?, ?, ?, ?, ?, ?)",
                    telemetry_row(batch, received_at),
                )
                if cur.rowcount:
                    inserted += 1
                    fresh.append(batch)
            conn.executemany(_ROLLUP_UPSERT, [rollup_values(b) for b in fresh])
        return inserted

    def query_raw(
        self, device_id: str, *, since: float, until: float, limit: int = 1000
    ) -> list[Telemetry]:
        rows = (
            self._conn()
            .execute(
                "SELECT body FROM telemetry WHERE device_id = ? AND ts >= ? AND ts < ? "
                "ORDER BY ts LIMIT ?",
                (device_id, since, until, limit),
            )
            .fetchall()
        )
        return [Telemetry.model_validate_json(r[0]) for r in rows]

    def query_rollups(
        self, device_ids: Sequence[str] | None, *, since: float, until: float
    ) -> list[RollupRow]:
        sql = "SELECT * FROM rollups WHERE minute >= ? AND minute < ?"
        params: list[Any] = [since, until]
        if device_ids is not None:
            sql += f" AND device_id IN ({','.join('?' * len(device_ids))})"
            params.extend(device_ids)
        rows = self._conn().execute(sql + " ORDER BY device_id, minute", params).fetchall()
        return [_rollup(r) for r in rows]

    def aggregate_rollups(
        self, device_ids: Sequence[str], *, since: float, until: float
    ) -> list[RollupRow]:
        if not device_ids:
            return []
        conn = self._conn()
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS _chosen (id TEXT PRIMARY KEY)")
        conn.execute("DELETE FROM _chosen")
        conn.executemany("INSERT OR IGNORE INTO _chosen VALUES (?)", [(d,) for d in device_ids])
        rows = conn.execute(
            "SELECT COUNT(DISTINCT device_id) AS devices, minute, SUM(batches) AS batches, "
            "SUM(inferences) AS inferences, SUM(errors) AS errors, "
            "SUM(latency_p95_sum) AS latency_p95_sum, SUM(latency_n) AS latency_n, "
            "MAX(latency_p99_max) AS latency_p99_max, SUM(cpu_sum) AS cpu_sum, "
            "SUM(mem_sum) AS mem_sum, SUM(rss_sum) AS rss_sum, SUM(system_n) AS system_n, "
            "MAX(drift_max) AS drift_max, SUM(feedback_count) AS feedback_count, "
            "SUM(feedback_correct) AS feedback_correct, SUM(readings) AS readings, "
            "SUM(spool_dropped) AS spool_dropped FROM rollups "
            "WHERE device_id IN (SELECT id FROM _chosen) AND minute >= ? AND minute < ? "
            "GROUP BY minute ORDER BY minute",
            (since, until),
        ).fetchall()
        return [_rollup(r, device_id=str(r["devices"])) for r in rows]

    def prune(self, now: float, *, raw_retention_s: float, rollup_retention_s: float) -> int:
        with self._tx() as conn:
            a = conn.execute(
                "DELETE FROM telemetry WHERE received_at < ?", (now - raw_retention_s,)
            ).rowcount
            b = conn.execute(
                "DELETE FROM rollups WHERE minute < ?", (now - rollup_retention_s,)
            ).rowcount
        return int(a + b)

    # ------------------------------------------------------------ commands --

    def add_command(self, command: CommandRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO commands (id, device_id, name, args, created_at, actor, status, "
                "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    command.id,
                    command.device_id,
                    command.name,
                    json.dumps(command.args),
                    command.created_at,
                    command.actor,
                    command.status,
                    command.detail,
                ),
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
        return [
            CommandRecord(
                id=r["id"],
                device_id=r["device_id"],
                name=r["name"],
                args=json.loads(r["args"]),
                created_at=r["created_at"],
                actor=r["actor"],
                status=r["status"],
                detail=r["detail"] or "",
                acked_at=r["acked_at"],
            )
            for r in rows
        ]

    # ------------------------------------------------------ users, tokens --

    def create_user(self, username: str, *, role: Role, password_hash: str, now: float) -> None:
        try:
            with self._tx() as conn:
                conn.execute(
                    "INSERT INTO users (username, role, password_hash, created_at, disabled) "
                    "VALUES (?, ?, ?, ?, 0)",
                    (username, role, password_hash, now),
                )
        except sqlite3.IntegrityError:
            raise StoreError(f"a user named {username!r} already exists") from None

    def get_user(self, username: str) -> User:
        row = self._one("SELECT * FROM users WHERE username = ?", (username,))
        if row is None:
            raise NotFound(f"no user {username!r}")
        return _user(row)

    def list_users(self) -> list[User]:
        return [_user(r) for r in self._conn().execute("SELECT * FROM users ORDER BY username")]

    def update_user(
        self,
        username: str,
        *,
        role: Role | None = None,
        password_hash: str | None = None,
        disabled: bool | None = None,
    ) -> User:
        changes = {
            "role": role,
            "password_hash": password_hash,
            "disabled": None if disabled is None else int(disabled),
        }
        sets = {k: v for k, v in changes.items() if v is not None}
        if sets:
            with self._tx() as conn:
                cur = conn.execute(
                    f"UPDATE users SET {', '.join(f'{k} = ?' for k in sets)} WHERE username = ?",
                    (*sets.values(), username),
                )
                if cur.rowcount == 0:
                    raise NotFound(f"no user {username!r}")
        return self.get_user(username)

    def create_api_token(self, token: ApiToken) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO api_tokens (id, username, name, token_hash, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    token.id,
                    token.username,
                    token.name,
                    token.token_hash,
                    token.created_at,
                    token.expires_at,
                ),
            )

    def find_api_token(self, token_hash: str) -> ApiToken | None:
        row = self._one("SELECT * FROM api_tokens WHERE token_hash = ?", (token_hash,))
        return None if row is None else ApiToken(**dict(row))

    def list_api_tokens(self, username: str | None = None) -> list[ApiToken]:
        if username is None:
            rows = self._conn().execute("SELECT * FROM api_tokens ORDER BY created_at")
        else:
            rows = self._conn().execute(
                "SELECT * FROM api_tokens WHERE username = ? ORDER BY created_at", (username,)
            )
        return [ApiToken(**dict(r)) for r in rows]

    def revoke_api_token(self, token_id: str, now: float) -> None:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                (now, token_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no API token {token_id!r}")

    def touch_api_token(self, token_id: str, now: float) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE api_tokens SET last_used = ? WHERE id = ?", (now, token_id))

    # ---------------------------------------------------------------- audit --

    def append_audit(self, entry: AuditEntry) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO audit (ts, actor, role, action, target, source_ip, outcome, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.ts,
                    entry.actor,
                    entry.role,
                    entry.action,
                    entry.target,
                    entry.source_ip,
                    entry.outcome,
                    json.dumps(entry.detail, sort_keys=True),
                ),
            )

    def list_audit(
        self, *, offset: int = 0, limit: int = 100, actor: str | None = None
    ) -> Page[AuditEntry]:
        where, params = ("WHERE actor = ?", [actor]) if actor else ("", [])
        conn = self._conn()
        total = int(conn.execute(f"SELECT COUNT(*) FROM audit {where}", params).fetchone()[0])
        rows = conn.execute(
            f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ).fetchall()
        items = [
            AuditEntry(
                id=r["id"],
                ts=r["ts"],
                actor=r["actor"],
                role=r["role"],
                action=r["action"],
                target=r["target"],
                source_ip=r["source_ip"],
                outcome=r["outcome"],
                detail=json.loads(r["detail"] or "{}"),
            )
            for r in rows
        ]
        return Page(items, total)


def _user(row: sqlite3.Row) -> User:
    return User(
        username=row["username"],
        role=row["role"],
        password_hash=row["password_hash"],
        created_at=row["created_at"],
        disabled=bool(row["disabled"]),
    )


def _rollup(r: sqlite3.Row, *, device_id: str | None = None) -> RollupRow:
    n_lat, n_sys = r["latency_n"] or 0, r["system_n"] or 0
    return RollupRow(
        device_id=device_id if device_id is not None else r["device_id"],
        minute=r["minute"],
        batches=r["batches"],
        inferences=r["inferences"],
        errors=r["errors"],
        latency_p95_ms=r["latency_p95_sum"] / n_lat if n_lat else None,
        latency_p99_max_ms=r["latency_p99_max"] if n_lat else None,
        cpu_percent=r["cpu_sum"] / n_sys if n_sys else None,
        mem_used_bytes=r["mem_sum"] / n_sys if n_sys else None,
        rss_bytes=r["rss_sum"] / n_sys if n_sys else None,
        drift_max=r["drift_max"],
        feedback_count=r["feedback_count"],
        feedback_correct=r["feedback_correct"],
        readings=r["readings"],
        spool_dropped=r["spool_dropped"],
    )
