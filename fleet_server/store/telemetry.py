"""Telemetry tables: raw batches (stored once per batch id) and per-minute rollups."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Integer

from edgefleet_contract.messages import Telemetry

from ..cohorts import DriftWindow, padded
from ._conn import Connections, DbConn, Dialect
from .base import RollupRow
from .rows import drift_status_values, rollup_values, telemetry_row
from .schema import ROLLUP_COLUMNS, RollupColumn


def rollup_upsert(dialect: Dialect, rows: int = 1) -> str:
    """Add ``rows`` (device, minute) contributions to the stored minutes (generated from
    ROLLUP_COLUMNS); the rows' keys must differ (see :func:`merged_rollups`)."""
    names = [c.name for c in ROLLUP_COLUMNS]
    sets = []
    for c in ROLLUP_COLUMNS:
        old, new = f"rollups.{c.name}", f"excluded.{c.name}"
        merged = f"{old} + {new}" if c.merge == "sum" else dialect.greatest(old, new)
        sets.append(f"{c.name} = {merged}")
    one = "(?, ?" + ", ?" * len(names) + ")"
    return (
        f"INSERT INTO rollups (device_id, minute, {', '.join(names)}) "
        f"VALUES {', '.join([one] * rows)} "
        f"ON CONFLICT(device_id, minute) DO UPDATE SET {', '.join(sets)}"
    )


def merged_rollups(batches: Sequence[Telemetry]) -> list[tuple[Any, ...]]:
    """The batches' contributions summed per (device, minute) the way the upsert merges
    them, one row per key in key order: one upsert per minute, not one per batch, and
    concurrent writers take the rows' locks in the same order."""
    acc: dict[tuple[str, float], list[Any]] = {}
    for b in batches:
        device, minute, *rest = rollup_values(b)
        values = [1, *rest]  # one batch
        seen = acc.get((device, minute))
        if seen is None:
            acc[(device, minute)] = values
            continue
        for i, col in enumerate(ROLLUP_COLUMNS):
            a, v = seen[i], values[i]
            seen[i] = (
                a + v
                if col.merge == "sum"
                else max((x for x in (a, v) if x is not None), default=None)
            )
    return [(d, m, *values) for (d, m), values in sorted(acc.items())]


def _aggregate_columns() -> str:
    """Each rollup column summed (or maxed) over devices, for one fleet-wide minute."""

    def one(c: RollupColumn) -> str:
        agg = f"{c.across.upper()}({c.name})"
        # PostgreSQL sums BIGINTs as NUMERIC; the figures stay integers.
        return f"CAST({agg} AS BIGINT) AS {c.name}" if c.kind is Integer else f"{agg} AS {c.name}"

    return ", ".join(one(c) for c in ROLLUP_COLUMNS)


DRIFT_UPSERT = """
INSERT INTO drift_status (device_id, ts, model, version, alert, alert_since, last_alert_ts,
    reference_effect, reference_p, baseline_effect, baseline_p, burn_in_rows, burn_in_needed)
VALUES (:device_id, :ts, :model, :version, :alert, CASE WHEN :alert <> 0 THEN :ts END,
    CASE WHEN :alert <> 0 THEN :ts END, :reference_effect, :reference_p, :baseline_effect,
    :baseline_p, :burn_in_rows, :burn_in_needed)
ON CONFLICT(device_id) DO UPDATE SET
    alert_since = CASE WHEN excluded.alert = 0 THEN NULL
        WHEN drift_status.alert <> 0 AND drift_status.model = excluded.model
            AND drift_status.version = excluded.version THEN drift_status.alert_since
        ELSE excluded.ts END,
    last_alert_ts = CASE WHEN excluded.alert <> 0 THEN excluded.ts
        ELSE drift_status.last_alert_ts END,
    ts = excluded.ts, model = excluded.model, version = excluded.version,
    alert = excluded.alert, reference_effect = excluded.reference_effect,
    reference_p = excluded.reference_p, baseline_effect = excluded.baseline_effect,
    baseline_p = excluded.baseline_p, burn_in_rows = excluded.burn_in_rows,
    burn_in_needed = excluded.burn_in_needed
WHERE excluded.ts >= drift_status.ts
"""
"""The newest report wins; a spool replay of older windows does not undo it."""


class TelemetryTables(Connections):
    def insert_telemetry(
        self,
        batches: Sequence[Telemetry],
        *,
        received_at: float,
        seen: Mapping[str, float] | None = None,
    ) -> int:
        """Store the batches not stored yet (their rollups and drift status with them);
        how many were new.  ``seen`` (as for ``touch_seen``) is written in the same
        transaction, so an ingest batch costs one commit, not two."""
        if not batches:
            return 0
        self._make_room(batches, received_at)
        with self._ingest_tx() as conn:
            fresh = self._insert_raw(conn, batches, received_at)
            self._upsert_rollups(conn, merged_rollups(fresh))
            drift = sorted(
                (d for d in map(drift_status_values, fresh) if d), key=lambda d: d["device_id"]
            )
            conn.executemany(DRIFT_UPSERT, drift)
            if seen:
                self._advance_seen(conn, seen)
        return len(fresh)

    def _make_room(self, batches: Sequence[Telemetry], received_at: float) -> None:
        """Runs before batches are written, outside their transaction: the place for
        PostgreSQL to create the day partitions they fall in (SQLite has none)."""

    def _upsert_rollups(self, conn: DbConn, rows: list[tuple[Any, ...]]) -> None:
        conn.executemany(rollup_upsert(self.dialect), rows)

    def _insert_raw(
        self, conn: DbConn, batches: Sequence[Telemetry], received_at: float
    ) -> list[Telemetry]:
        """Store each batch whose id was not stored yet; the ones that were new."""
        fresh: list[Telemetry] = []
        for batch in batches:
            cur = conn.execute(
                "INSERT INTO telemetry_keys (device_id, batch_id, received_at) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (batch.device_id, batch.batch_id, received_at),
            )
            if cur.rowcount:
                conn.execute(
                    "INSERT INTO telemetry (device_id, batch_id, seq, ts, received_at, body) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    telemetry_row(batch, received_at),
                )
                fresh.append(batch)
        return fresh

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
        chosen, params = self._chosen(conn, device_ids)
        rows = conn.execute(
            f"SELECT COUNT(DISTINCT device_id) AS devices, minute, {_aggregate_columns()} "
            f"FROM rollups WHERE {chosen} AND minute >= ? AND minute < ? "
            "GROUP BY minute ORDER BY minute",
            (*params, since, until),
        ).fetchall()
        return [_rollup(r, device_id=str(r["devices"])) for r in rows]

    def _chosen(self, conn: DbConn, device_ids: Sequence[str]) -> tuple[str, list[Any]]:
        """A predicate on ``device_id`` for many ids: SQLite joins a temporary table."""
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS _chosen (id TEXT PRIMARY KEY)")
        conn.execute("DELETE FROM _chosen")
        conn.executemany(
            "INSERT INTO _chosen VALUES (?) ON CONFLICT DO NOTHING", [(d,) for d in device_ids]
        )
        return "device_id IN (SELECT id FROM _chosen)", []

    def drift_windows(
        self, *, since: float, until: float, tag: str | None, limit: int
    ) -> list[tuple[str | None, DriftWindow]]:
        d = self.dialect
        body = "t.body"
        cohort = d.json_key("d.tags") if tag is not None else "NULL"
        rows = self._conn().execute(
            f"SELECT t.device_id, t.ts, {cohort} AS cohort, "
            f"{d.json_text(body, 'inference', 'model')} AS model, "
            f"{d.json_text(body, 'inference', 'version')} AS version, "
            f"{d.json_text(body, 'drift', 'histograms')} AS hist, "
            f"{d.json_text(body, 'drift', 'multivariate', 'histograms')} AS mv_hist, "
            f"{d.json_flag(body, 'drift', 'alert')} AS alert, "
            f"{d.json_num(body, 'drift', 'baseline', 'effect')} AS base_effect, "
            f"{d.json_num(body, 'inference', 'feedback_count')} AS fb_n, "
            f"{d.json_num(body, 'inference', 'feedback_correct')} AS fb_ok, "
            f"{d.json_num(body, 'inference', 'latency', 'p95_ms')} AS p95 "
            "FROM telemetry t JOIN devices d ON d.id = t.device_id "
            f"WHERE t.ts >= ? AND t.ts < ? AND {d.json_text(body, 'drift', 'method')} = 'chi2' "
            "ORDER BY t.ts DESC LIMIT ?",
            ([d.key_param(tag)] if tag is not None else []) + [since, until, limit],
        )
        out: list[tuple[str | None, DriftWindow]] = []
        for r in rows:
            if r["model"] is None or not r["hist"]:
                continue  # no inference section, or a model too wide to ship histograms
            window = DriftWindow(
                device_id=r["device_id"],
                ts=r["ts"],
                model=r["model"],
                version=r["version"],
                histograms=padded(json.loads(r["hist"])),
                alert=bool(r["alert"]),
                baseline_effect=r["base_effect"],
                feedback_count=int(r["fb_n"] or 0),
                feedback_correct=int(r["fb_ok"] or 0),
                p95_ms=r["p95"],
                multivariate=padded(json.loads(r["mv_hist"])) if r["mv_hist"] else None,
            )
            out.append((r["cohort"], window))
        return out

    def prune(self, now: float, *, raw_retention_s: float, rollup_retention_s: float) -> int:
        with self._tx() as conn:
            a = conn.execute(
                "DELETE FROM telemetry WHERE received_at < ?", (now - raw_retention_s,)
            ).rowcount
            conn.execute(
                "DELETE FROM telemetry_keys WHERE received_at < ?", (now - raw_retention_s,)
            )
            b = conn.execute(
                "DELETE FROM rollups WHERE minute < ?", (now - rollup_retention_s,)
            ).rowcount
        return int(a + b)


def _rollup(r: Any, *, device_id: str | None = None) -> RollupRow:
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
