"""Telemetry queries: raw batches and per-minute rollups, per device or over a selector."""

from __future__ import annotations

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
    feedback_accuracy: float | None
    readings: int
    spool_dropped: int


class TelemetryOut(BaseModel):
    device_id: str | None
    resolution: Literal["raw", "minute"]
    since: float
    until: float
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
    since: float | None = Query(None, ge=0),
    until: float | None = Query(None, ge=0),
    resolution: Literal["raw", "minute"] = "minute",
    limit: int = Query(1000, ge=1, le=10_000),
    who: Principal = Depends(require("viewer")),
    c: ApiContext = Depends(ctx),
) -> TelemetryOut:
    c.store.get_device(device_id)
    start, end = _window(c, since, until)
    out = TelemetryOut(device_id=device_id, resolution=resolution, since=start, until=end)
    if resolution == "raw":
        batches = c.store.query_raw(device_id, since=start, until=end, limit=limit)
        out.raw = [b.model_dump(mode="json", exclude_none=True) for b in batches]
    else:
        rows = c.store.aggregate_rollups([device_id], since=start, until=end)
        out.rollups = [_aggregate_out(r) for r in rows]
    return out


@router.get("/telemetry/aggregate", response_model=TelemetryOut)
def aggregate(
    selector: str = Query("all", max_length=2000),
    since: float | None = Query(None, ge=0),
    until: float | None = Query(None, ge=0),
    who: Principal = Depends(require("viewer")),
    c: ApiContext = Depends(ctx),
) -> TelemetryOut:
    start, end = _window(c, since, until)
    chosen = parse_selector(selector)
    ids = [d.id for d in c.store.list_devices(where=chosen.matches, limit=1_000_000).items]
    rows = c.store.aggregate_rollups(ids, since=start, until=end)
    return TelemetryOut(
        device_id=None,
        resolution="minute",
        since=start,
        until=end,
        rollups=[_aggregate_out(r) for r in rows],
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
        feedback_accuracy=r.feedback_correct / r.feedback_count if r.feedback_count else None,
        readings=r.readings,
        spool_dropped=r.spool_dropped,
    )
