"""Fleet-wide views the console reads: the overview summary and update history.

The summary is computed in SQL (``GROUP BY`` over extracted columns and
``json_each`` over tags) so the overview page costs a few index scans at
10,000 devices, never a Python loop over every twin.

Update history: the reported state carries only the update a device is
working on now; :meth:`OverviewTables.note_update` keeps each phase change
(``downloading`` -> ``verifying`` -> ... -> ``committed``/``failed``) as a
row, written in the same transaction as the reported state itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgefleet_contract.messages import ReportedState, Telemetry

from ._conn import Connections, DbConn
from .rows import from_row

MAX_ALERTS = 50
"""Alert lists are cut here (``total`` still counts all of them)."""


@dataclass(frozen=True)
class Bucket:
    key: str
    total: int
    online: int


@dataclass(frozen=True)
class Alert:
    device_id: str
    value: float | None
    detail: str = ""


@dataclass(frozen=True)
class AlertList:
    total: int
    items: list[Alert]


@dataclass(frozen=True)
class FleetSummary:
    total: int
    online: int
    by_state: dict[str, int]
    by_model: list[Bucket]
    by_firmware: list[Bucket]
    by_tag: list[Bucket]
    by_health: list[Bucket]
    alerts: dict[str, AlertList] = field(default_factory=dict)
    by_model_sha256: list[Bucket] = field(default_factory=list)
    """Devices per exact package (one flavour of a version), by its SHA-256."""


@dataclass(frozen=True)
class UpdateEvent:
    device_id: str
    ts: float
    desired_version: int
    kind: str
    target: str
    phase: str
    progress: float
    error: str | None


def _buckets(conn: DbConn, expr: str, where: str = "") -> list[Bucket]:
    rows = conn.execute(
        f"SELECT {expr} AS bucket, COUNT(*) AS total, SUM(online) AS online FROM devices "
        f"{where} GROUP BY bucket ORDER BY total DESC, bucket LIMIT 100"
    ).fetchall()
    return [Bucket(r["bucket"] or "(none)", int(r["total"]), int(r["online"] or 0)) for r in rows]


def _alerts(conn: DbConn, sql: str, params: tuple[object, ...], *, order: str) -> AlertList:
    """The first :data:`MAX_ALERTS` rows of ``sql`` by ``order``, and how many there are."""
    total = conn.execute(f"SELECT COUNT(*) FROM ({sql}) AS a", params).fetchone()[0]
    rows = conn.execute(
        f"SELECT * FROM ({sql}) AS a ORDER BY {order} LIMIT ?", (*params, MAX_ALERTS)
    )
    items = [Alert(r["device_id"], r["value"], r["detail"] or "") for r in rows]
    return AlertList(int(total), items)


class OverviewTables(Connections):
    def fleet_summary(
        self, *, now: float, window_s: float, drift_threshold: float, silent_s: float
    ) -> FleetSummary:
        """Counts by state, model, firmware, tag and health, and the four alert lists,
        all read in one snapshot (a deferred read transaction in WAL mode), so the
        numbers add up even while ingest writes."""
        with self._snapshot() as conn:
            return self._summary(conn, now, window_s, drift_threshold, silent_s)

    def _summary(
        self,
        conn: DbConn,
        now: float,
        window_s: float,
        drift_threshold: float,
        silent_s: float,
    ) -> FleetSummary:
        head = conn.execute(
            "SELECT COUNT(*) AS total, COALESCE(SUM(online), 0) AS online FROM devices"
        ).fetchone()
        states = {
            r["state"]: int(r["n"])
            for r in conn.execute("SELECT state, COUNT(*) AS n FROM devices GROUP BY state")
        }
        d = self.dialect
        tags = conn.execute(
            "SELECT t.key || '=' || t.value AS tag, COUNT(*) AS total, SUM(d.online) AS online "
            f"FROM devices d, {d.pairs('d.tags', 't')} "
            "GROUP BY tag ORDER BY total DESC, tag LIMIT 100"
        ).fetchall()
        update = [d.json_text("reported", "update", k) for k in ("phase", "target", "error")]
        since = now - window_s
        alerts = {
            "silent": _alerts(
                conn,
                "SELECT id AS device_id, last_seen AS value, "
                "CASE WHEN online = 1 THEN 'online but quiet' ELSE 'offline' END AS detail "
                "FROM devices WHERE state = 'enrolled' AND COALESCE(last_seen, 0) < ?",
                (now - silent_s,),
                order="COALESCE(value, 0), device_id",
            ),
            "failed_updates": _alerts(
                conn,
                f"SELECT id AS device_id, reported_at AS value, {update[0]} || ' ' || "
                f"COALESCE({update[1]}, '') || COALESCE(': ' || {update[2]}, '') AS detail "
                f"FROM devices WHERE {update[0]} IN ('failed', 'rolled_back')",
                (),
                order="value DESC, device_id",
            ),
            **self._window_alerts(conn, since - 60, drift_threshold),
        }
        return FleetSummary(
            total=int(head["total"]),
            online=int(head["online"]),
            by_state=states,
            by_model=_buckets(
                conn, "model_name || '@' || model_version", "WHERE state = 'enrolled'"
            ),
            by_firmware=_buckets(conn, "firmware_version", "WHERE state = 'enrolled'"),
            by_tag=[Bucket(r["tag"], int(r["total"]), int(r["online"] or 0)) for r in tags],
            by_health=_buckets(conn, "health", "WHERE state = 'enrolled'"),
            alerts=alerts,
            by_model_sha256=_buckets(
                conn, d.json_text("reported", "model", "sha256"), "WHERE state = 'enrolled'"
            ),
        )

    def _window_alerts(
        self, conn: DbConn, since: float, drift_threshold: float
    ) -> dict[str, AlertList]:
        """Drift and spool drops from ONE scan of the window's rollups (the costly part
        of the summary: devices x minutes rows).  Spool drop counters are running
        totals, so a device is flagged when its newest total is above its last total
        from before the window (one primary-key lookup per candidate)."""
        rows = conn.execute(
            "SELECT device_id, MAX(drift_max) AS drift, MAX(spool_dropped) AS dropped "
            "FROM rollups WHERE minute >= ? GROUP BY device_id",
            (since,),
        ).fetchall()
        drift = self._drift_alerts(conn, rows, since, drift_threshold)
        drops: list[tuple[float, str]] = []
        for r in rows:
            if not r["dropped"]:
                continue
            before = conn.execute(
                "SELECT spool_dropped FROM rollups WHERE device_id = ? AND minute < ? "
                "ORDER BY minute DESC LIMIT 1",
                (r["device_id"], since),
            ).fetchone()
            grew = r["dropped"] - (before[0] if before else 0)
            if grew > 0:
                drops.append((grew, r["device_id"]))
        drops.sort(key=lambda x: (-x[0], x[1]))
        return {
            "drift": AlertList(len(drift), drift[:MAX_ALERTS]),
            "spool_drops": AlertList(len(drops), [Alert(d, v) for v, d in drops[:MAX_ALERTS]]),
        }

    def _drift_alerts(
        self, conn: DbConn, rows: list[Any], since: float, threshold: float
    ) -> list[Alert]:
        """Devices whose inputs changed from their own normal during the window (their
        chi-squared reports; value: the effect against the baseline), then, for agents
        that still send PSI, the old rule: largest PSI above ``threshold``."""
        status = conn.execute(
            "SELECT device_id, alert, alert_since, last_alert_ts, baseline_effect FROM drift_status"
        ).fetchall()
        tested = {r["device_id"] for r in status}
        out = [
            Alert(
                r["device_id"],
                r["baseline_effect"],
                "changed from its baseline" if r["alert"] else "was changed, back to its baseline",
            )
            for r in sorted(status, key=lambda r: (-r["alert"], -(r["last_alert_ts"] or 0)))
            if r["alert"] or (r["last_alert_ts"] or 0) >= since
        ]
        legacy = sorted(
            (
                (r["drift"], r["device_id"])
                for r in rows
                if r["device_id"] not in tested and (r["drift"] or 0) > threshold
            ),
            key=lambda x: (-x[0], x[1]),
        )
        return out + [Alert(d, v, "PSI over the line") for v, d in legacy]

    # ------------------------------------------------------------ updates --

    def note_update(self, conn: DbConn, device_id: str, reported: ReportedState, ts: float) -> None:
        """Keep ``reported.update`` as a history row when its phase or target changed.

        Called inside the transaction that stores the reported state.
        """
        u = reported.update
        if (
            u is None
            or conn.execute("SELECT 1 FROM devices WHERE id = ?", (device_id,)).fetchone() is None
        ):
            return
        last = conn.execute(
            "SELECT desired_version, target, phase FROM update_events WHERE device_id = ? "
            "ORDER BY id DESC LIMIT 1",
            (device_id,),
        ).fetchone()
        if last is not None and tuple(last) == (u.desired_version, u.target, u.phase):
            return
        conn.execute(
            "INSERT INTO update_events (device_id, ts, received_at, desired_version, kind, "
            "target, phase, progress, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                device_id,
                u.ts,
                ts,
                u.desired_version,
                u.kind,
                u.target,
                u.phase,
                u.progress,
                u.error,
            ),
        )

    def list_update_events(self, device_id: str, *, limit: int = 100) -> list[UpdateEvent]:
        rows = self._conn().execute(
            "SELECT * FROM update_events WHERE device_id = ? ORDER BY id DESC LIMIT ?",
            (device_id, limit),
        )
        return [from_row(UpdateEvent, r) for r in rows]

    # ---------------------------------------------------------- telemetry --

    def recent_raw(self, device_id: str, *, since: float, limit: int) -> list[Telemetry]:
        """The newest ``limit`` batches since ``since``, oldest first (for live charts)."""
        rows = self._conn().execute(
            "SELECT body FROM telemetry WHERE device_id = ? AND ts >= ? ORDER BY ts DESC LIMIT ?",
            (device_id, since, limit),
        )
        return [Telemetry.model_validate_json(r[0]) for r in reversed(rows.fetchall())]
