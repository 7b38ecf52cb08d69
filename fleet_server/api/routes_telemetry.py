"""Telemetry queries: raw batches and rollups, per device or over a selector.

Rollups are kept per minute; ``step`` (a multiple of 60 s) merges them into
coarser buckets for long windows: counts add up, maxima stay maxima, means are
weighted by the batches behind them, and ``devices`` is the most devices seen
in any minute of the bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from edgefleet_contract.errors import EdgefleetError

from ..auth import Principal
from ..selector import parse as parse_selector
from ..store.base import RollupRow
from .context import ApiContext
from .deps import ctx, require

router = APIRouter(tags=["telemetry"])
MAX_SPAN_S = 31 * 86400
Step = Query(60, ge=60, le=86400, multiple_of=60, description="bucket width in seconds (minutes)")


class RollupOut(BaseModel):
    minute: float
    devices: int
    batches: int
    inferences: int
    errors: int
    error_rate: float | None
    latency_p95_ms: float | None
    latency_p99_max_ms: float | None
    cpu_percent: float | None
    mem_used_bytes: float | None
    drift_max: float | None
    feedback_count: int
    feedback_correct: int
    feedback_accuracy: float | None
    readings: int
    spool_dropped: int


class TelemetryOut(BaseModel):
    device_id: str | None
    resolution: Literal["raw", "minute"]
    since: float
    until: float
    step: int = 60
    rollups: list[RollupOut] = []
    raw: list[dict[str, Any]] = []


def _window(c: ApiContext, since: float | None, until: float | None) -> tuple[float, float]:
    end = until if until is not None else c.clock()
    start = since if since is not None else end - 3600
    if start >= end:
        raise EdgefleetError("'since' must be before 'until'")
    if end - start > MAX_SPAN_S:
        raise EdgefleetError("ask for at most 31 days at a time")
    return start, end


@router.get("/devices/{device_id}/telemetry", response_model=TelemetryOut)
def device_telemetry(
    device_id: str,
    since: float | None = Query(None, ge=0, le=1e11, allow_inf_nan=False),
    until: float | None = Query(None, ge=0, le=1e11, allow_inf_nan=False),
    resolution: Literal["raw", "minute"] = "minute",
    step: int = Step,
    limit: int = Query(1000, ge=1, le=10_000),
    who: Principal = Depends(require("viewer")),
    c: ApiContext = Depends(ctx),
) -> TelemetryOut:
    c.store.get_device(device_id)
    start, end = _window(c, since, until)
    out = TelemetryOut(
        device_id=device_id, resolution=resolution, since=start, until=end, step=step
    )
    if resolution == "raw":
        batches = c.store.query_raw(device_id, since=start, until=end, limit=limit)
        out.raw = [b.model_dump(mode="json", exclude_none=True) for b in batches]
    else:
        rows = c.store.aggregate_rollups([device_id], since=start, until=end)
        out.rollups = rebucket([_aggregate_out(r) for r in rows], step)
    return out


@router.get("/telemetry/aggregate", response_model=TelemetryOut)
def aggregate(
    selector: str = Query("all", max_length=2000),
    since: float | None = Query(None, ge=0, le=1e11, allow_inf_nan=False),
    until: float | None = Query(None, ge=0, le=1e11, allow_inf_nan=False),
    step: int = Step,
    who: Principal = Depends(require("viewer")),
    c: ApiContext = Depends(ctx),
) -> TelemetryOut:
    start, end = _window(c, since, until)
    chosen = parse_selector(selector)
    ids = [d.id for d in c.store.all_devices(where=chosen)]
    rows = c.store.aggregate_rollups(ids, since=start, until=end)
    return TelemetryOut(
        device_id=None,
        resolution="minute",
        since=start,
        until=end,
        step=step,
        rollups=rebucket([_aggregate_out(r) for r in rows], step),
    )


def _aggregate_out(r: RollupRow) -> RollupOut:
    """A per-minute fleet row from the store (``device_id`` carries the device count)."""
    return RollupOut(
        minute=r.minute,
        devices=int(r.device_id),
        batches=r.batches,
        inferences=r.inferences,
        errors=r.errors,
        error_rate=r.errors / r.inferences if r.inferences else None,
        latency_p95_ms=r.latency_p95_ms,
        latency_p99_max_ms=r.latency_p99_max_ms,
        cpu_percent=r.cpu_percent,
        mem_used_bytes=r.mem_used_bytes,
        drift_max=r.drift_max,
        feedback_count=r.feedback_count,
        feedback_correct=r.feedback_correct,
        feedback_accuracy=r.feedback_correct / r.feedback_count if r.feedback_count else None,
        readings=r.readings,
        spool_dropped=r.spool_dropped,
    )


def rebucket(rows: Sequence[RollupOut], step: int) -> list[RollupOut]:
    """Merge per-minute rows (sorted by minute) into ``step``-second buckets."""
    if step <= 60:
        return list(rows)
    buckets: dict[float, list[RollupOut]] = {}
    for row in rows:
        buckets.setdefault(row.minute - row.minute % step, []).append(row)
    return [_merge(start, group) for start, group in buckets.items()]


def _merge(start: float, rows: list[RollupOut]) -> RollupOut:
    inferences = sum(r.inferences for r in rows)
    errors = sum(r.errors for r in rows)
    feedback = sum(r.feedback_count for r in rows)
    correct = sum(r.feedback_correct for r in rows)
    return RollupOut(
        minute=start,
        devices=max(r.devices for r in rows),
        batches=sum(r.batches for r in rows),
        inferences=inferences,
        errors=errors,
        error_rate=errors / inferences if inferences else None,
        latency_p95_ms=_mean(rows, "latency_p95_ms"),
        latency_p99_max_ms=_max(rows, "latency_p99_max_ms"),
        cpu_percent=_mean(rows, "cpu_percent"),
        mem_used_bytes=_mean(rows, "mem_used_bytes"),
        drift_max=_max(rows, "drift_max"),
        feedback_count=feedback,
        feedback_correct=correct,
        feedback_accuracy=correct / feedback if feedback else None,
        readings=sum(r.readings for r in rows),
        spool_dropped=max(r.spool_dropped for r in rows),  # a running total: the latest is max
    )


def _mean(rows: list[RollupOut], field: str) -> float | None:
    weighted = [(v, max(r.batches, 1)) for r in rows if (v := getattr(r, field)) is not None]
    total = sum(w for _, w in weighted)
    return sum(v * w for v, w in weighted) / total if total else None


def _max(rows: list[RollupOut], field: str) -> float | None:
    values = [v for r in rows if (v := getattr(r, field)) is not None]
    return max(values) if values else None
