"""Telemetry tables: raw batches (stored once per batch id) and per-minute rollups."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from edgefleet_contract.messages import Telemetry

from ..cohorts import DriftWindow, padded
from ._conn import Connections
from .base import RollupRow
from .rows import drift_status_values, rollup_values, telemetry_row

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


_DRIFT_UPSERT = """
INSERT INTO drift_status (device_id, ts, model, version, alert, alert_since, last_alert_ts,
    reference_effect, reference_p, baseline_effect, baseline_p, burn_in_rows, burn_in_needed)
VALUES (:device_id, :ts, :model, :version, :alert, CASE WHEN :alert THEN :ts END,
    CASE WHEN :alert THEN :ts END, :reference_effect, :reference_p, :baseline_effect,
    :baseline_p, :burn_in_rows, :burn_in_needed)
ON CONFLICT(device_id) DO UPDATE SET
    alert_since = CASE WHEN NOT excluded.alert THEN NULL
        WHEN drift_status.alert AND drift_status.model = excluded.model
            AND drift_status.version = excluded.version THEN drift_status.alert_since
        ELSE excluded.ts END,
    last_alert_ts = CASE WHEN excluded.alert THEN excluded.ts ELSE drift_status.last_alert_ts END,
    ts = excluded.ts, model = excluded.model, version = excluded.version,
    alert = excluded.alert, reference_effect = excluded.reference_effect,
    reference_p = excluded.reference_p, baseline_effect = excluded.baseline_effect,
    baseline_p = excluded.baseline_p, burn_in_rows = excluded.burn_in_rows,
    burn_in_needed = excluded.burn_in_needed
WHERE excluded.ts >= drift_status.ts
"""
"""The newest report wins; a spool replay of older windows does not undo it."""


class TelemetryTables(Connections):
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
            conn.executemany(_DRIFT_UPSERT, [d for d in map(drift_status_values, fresh) if d])
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

    def drift_windows(
        self, *, since: float, until: float, tag: str | None, limit: int
    ) -> list[tuple[str | None, DriftWindow]]:
        path = f'$."{tag}"' if tag is not None else None
        rows = self._conn().execute(
            "SELECT t.device_id, t.ts, json_extract(d.tags, ?) AS cohort, "
            "json_extract(t.body, '$.inference.model') AS model, "
            "json_extract(t.body, '$.inference.version') AS version, "
            "json_extract(t.body, '$.drift.histograms') AS hist, "
            "json_extract(t.body, '$.drift.multivariate.histograms') AS mv_hist, "
            "json_extract(t.body, '$.drift.alert') AS alert, "
            "json_extract(t.body, '$.drift.baseline.effect') AS base_effect, "
            "json_extract(t.body, '$.inference.feedback_count') AS fb_n, "
            "json_extract(t.body, '$.inference.feedback_correct') AS fb_ok, "
            "json_extract(t.body, '$.inference.latency.p95_ms') AS p95 "
            "FROM telemetry t JOIN devices d ON d.id = t.device_id "
            "WHERE t.ts >= ? AND t.ts < ? AND json_extract(t.body, '$.drift.method') = 'chi2' "
            "ORDER BY t.ts DESC LIMIT ?",
            (path, since, until, limit),
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
            b = conn.execute(
                "DELETE FROM rollups WHERE minute < ?", (now - rollup_retention_s,)
            ).rowcount
        return int(a + b)


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
