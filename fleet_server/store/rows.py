"""Conversions between store rows and records (pure functions)."""

from __future__ import annotations

import json
from typing import Any

from edgefleet_contract.messages import DesiredState, DriftReport, ReportedState, Telemetry

from .base import Device


def device_from_row(row: Any, *, full: bool = True) -> Device:
    """``full=False`` skips parsing the twin JSON (for filtering many devices)."""
    return Device(
        id=row["id"],
        name=row["name"],
        tags=json.loads(row["tags"]),
        groups=tuple(json.loads(row["groups"])),
        state=row["state"],
        created_at=row["created_at"],
        enrolled_at=row["enrolled_at"],
        last_seen=row["last_seen"],
        online=bool(row["online"]),
        cert_serial=int(row["cert_serial"]) if row["cert_serial"] else None,
        cert_not_after=row["cert_not_after"],
        reported=ReportedState.model_validate_json(row["reported"])
        if full and row["reported"]
        else None,
        reported_at=row["reported_at"],
        desired=DesiredState.model_validate_json(row["desired"])
        if full and row["desired"]
        else None,
        model_name=row["model_name"],
        model_version=row["model_version"],
        firmware_version=row["firmware_version"],
        agent_version=row["agent_version"],
        hardware=row["hardware"],
        health=row["health"],
    )


def telemetry_row(batch: Telemetry, received_at: float) -> tuple[Any, ...]:
    return (
        batch.device_id,
        batch.batch_id,
        batch.seq,
        batch.ts,
        received_at,
        batch.model_dump_json(exclude_none=True),
    )


def rollup_values(batch: Telemetry) -> tuple[Any, ...]:
    """One batch's contribution to its device's per-minute rollup row."""
    inf, sysm, drift = batch.inference, batch.system, batch.drift
    lat = inf.latency if inf else None
    return (
        batch.device_id,
        float(int(batch.ts // 60) * 60),
        inf.count if inf else 0,
        inf.errors if inf else 0,
        lat.p95_ms if lat else 0.0,
        1 if lat else 0,
        lat.p99_ms if lat else 0.0,
        sysm.cpu_percent if sysm else 0.0,
        float(sysm.mem_used_bytes) if sysm else 0.0,
        float(sysm.rss_bytes) if sysm else 0.0,
        1 if sysm else 0,
        drift.score if drift else 0.0,
        inf.feedback_count if inf else 0,
        inf.feedback_correct if inf else 0,
        len(batch.readings),
        batch.spool.dropped_total,
    )


def drift_status_values(batch: Telemetry) -> dict[str, Any] | None:
    """A chi-squared drift report as a ``drift_status`` row (None for none or PSI)."""
    d, inf = batch.drift, batch.inference
    if not isinstance(d, DriftReport):
        return None
    return {
        "device_id": batch.device_id,
        "ts": batch.ts,
        "model": inf.model if inf else None,
        "version": inf.version if inf else None,
        "alert": int(d.alert),
        "reference_effect": d.reference.effect,
        "reference_p": d.reference.p_value,
        "baseline_effect": d.baseline.effect if d.baseline else None,
        "baseline_p": d.baseline.p_value if d.baseline else None,
        "burn_in_rows": d.burn_in.rows,
        "burn_in_needed": d.burn_in.needed,
    }
