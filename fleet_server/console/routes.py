"""The few read endpoints the console needs beyond the REST API (``/api/v1/console``).

Same authentication and roles as every other route: these are viewer reads.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from ..api.context import ApiContext
from ..api.deps import ctx, principal, require
from ..auth import SESSION_COOKIE, Principal, csrf_for
from ..cohorts import cohort_views
from ..store.overview import FleetSummary, UpdateEvent
from .series import DeviceSeries, series_of

router = APIRouter(prefix="/console", tags=["console"])
MAX_SERIES_SPAN_S = 86400


class SessionOut(BaseModel):
    username: str
    role: str
    csrf_token: str | None
    """The page reloads without the value it got at login; this gives it back (it is
    derived from the HttpOnly cookie, which a cross-site page can neither read nor send
    along with a readable response)."""


class BucketOut(BaseModel):
    key: str
    total: int
    online: int


class AlertOut(BaseModel):
    device_id: str
    value: float | None
    detail: str


class AlertListOut(BaseModel):
    total: int
    items: list[AlertOut]


class SummaryOut(BaseModel):
    now: float
    window_s: float
    drift_threshold: float
    silent_s: float
    total: int
    online: int
    by_state: dict[str, int]
    by_model: list[BucketOut]
    by_firmware: list[BucketOut]
    by_tag: list[BucketOut]
    by_health: list[BucketOut]
    by_model_sha256: list[BucketOut]
    alerts: dict[str, AlertListOut]


class UpdateEventOut(BaseModel):
    ts: float
    desired_version: int
    kind: str
    target: str
    phase: str
    progress: float
    error: str | None


@router.get("/session", response_model=SessionOut)
def session(request: Request, who: Principal = Depends(principal)) -> SessionOut:
    cookie = request.cookies.get(SESSION_COOKIE)
    bearer = request.headers.get("Authorization", "").lower().startswith("bearer ")
    csrf = csrf_for(cookie) if cookie and not bearer else None
    return SessionOut(username=who.username, role=who.role, csrf_token=csrf)


@router.get("/summary", response_model=SummaryOut)
def summary(
    window_s: float = Query(900, ge=60, le=7 * 86400),
    drift_threshold: float = Query(
        0.25, ge=0, le=100, description="PSI above this alerts (agents that still send PSI)"
    ),
    silent_s: float = Query(300, ge=10, le=30 * 86400, description="no message for this long"),
    who: Principal = Depends(require("viewer")),
    c: ApiContext = Depends(ctx),
) -> SummaryOut:
    now = c.clock()
    s: FleetSummary = c.store.fleet_summary(
        now=now, window_s=window_s, drift_threshold=drift_threshold, silent_s=silent_s
    )
    return SummaryOut(
        now=now,
        window_s=window_s,
        drift_threshold=drift_threshold,
        silent_s=silent_s,
        total=s.total,
        online=s.online,
        by_state=s.by_state,
        by_model=[BucketOut(**vars(b)) for b in s.by_model],
        by_firmware=[BucketOut(**vars(b)) for b in s.by_firmware],
        by_tag=[BucketOut(**vars(b)) for b in s.by_tag],
        by_health=[BucketOut(**vars(b)) for b in s.by_health],
        by_model_sha256=[BucketOut(**vars(b)) for b in s.by_model_sha256],
        alerts={
            name: AlertListOut(total=a.total, items=[AlertOut(**vars(i)) for i in a.items])
            for name, a in s.alerts.items()
        },
    )


@router.get("/devices/{device_id}/series", response_model=DeviceSeries)
def device_series(
    device_id: str,
    window_s: float = Query(900, ge=60, le=MAX_SERIES_SPAN_S),
    limit: int = Query(720, ge=10, le=5000),
    who: Principal = Depends(require("viewer")),
    c: ApiContext = Depends(ctx),
) -> DeviceSeries:
    """The newest ``limit`` batches of the last ``window_s`` seconds, as chart series."""
    c.store.get_device(device_id)
    now = c.clock()
    return series_of(device_id, c.store.recent_raw(device_id, since=now - window_s, limit=limit))


@router.get("/devices/{device_id}/updates", response_model=list[UpdateEventOut])
def device_updates(
    device_id: str,
    limit: int = Query(100, ge=1, le=1000),
    who: Principal = Depends(require("viewer")),
    c: ApiContext = Depends(ctx),
) -> list[UpdateEventOut]:
    """Each phase change of the device's reported updates, newest first."""
    c.store.get_device(device_id)
    events: list[UpdateEvent] = c.store.list_update_events(device_id, limit=limit)
    return [
        UpdateEventOut(**{k: v for k, v in vars(e).items() if k != "device_id"}) for e in events
    ]


class SliceOut(BaseModel):
    key: str
    devices: int
    windows: int
    samples: int
    alerting: int
    effect: float | None
    p_value: float | None
    drifted_features: int
    labels: int
    accuracy: float | None
    accuracy_low: float | None
    accuracy_high: float | None
    p95_ms: float | None
    multivariate_p_value: float | None = None
    multivariate_effect: float | None = None


class CohortViewOut(BaseModel):
    model: str
    version: str
    by: str
    slices: list[SliceOut]
    worst_drift: str | None
    worst_accuracy: str | None


MAX_COHORT_WINDOWS = 20_000


@router.get("/cohorts", response_model=list[CohortViewOut])
def cohorts(
    by: str = Query(
        "device",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="a tag key (slices: its values), or 'device' (one slice per device)",
    ),
    window_s: float = Query(3600, ge=60, le=7 * 86400),
    who: Principal = Depends(require("viewer")),
    c: ApiContext = Depends(ctx),
) -> list[CohortViewOut]:
    """Drift, accuracy and latency per slice and model version, from the drift windows'
    histograms merged over the last ``window_s`` (at most the newest 20,000 windows)."""
    now = c.clock()
    tag = None if by == "device" else by
    rows = c.store.drift_windows(
        since=now - window_s, until=now + 1, tag=tag, limit=MAX_COHORT_WINDOWS
    )
    key = {w.device_id: (w.device_id if tag is None else (v or "(untagged)")) for v, w in rows}
    views = cohort_views([w for _, w in rows], key.__getitem__, by=by)
    return [
        CohortViewOut(
            model=v.model,
            version=v.version,
            by=v.by,
            slices=[SliceOut(**vars(s)) for s in v.slices],
            worst_drift=v.worst_drift,
            worst_accuracy=v.worst_accuracy,
        )
        for v in views
    ]
