"""Chart series for the device page, cut from raw telemetry batches (pure).

The browser gets small parallel arrays (one value per batch, ``None`` where
the batch did not carry the section) instead of whole batches: readings and
class histograms can be large and the charts need none of them.  Drift is
kept for the features that drifted most in the window, so a model with
thousands of inputs still gives a chart with a handful of lines.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from edgefleet_contract.messages import DriftReport, DriftStats, Telemetry

MAX_FEATURES = 6


class DeviceSeries(BaseModel):
    device_id: str
    ts: list[float] = []
    latency_p50_ms: list[float | None] = []
    latency_p95_ms: list[float | None] = []
    latency_p99_ms: list[float | None] = []
    throughput_per_s: list[float | None] = []
    errors: list[int | None] = []
    cpu_percent: list[float | None] = []
    mem_percent: list[float | None] = []
    rss_mb: list[float | None] = []
    confidence_mean: list[float | None] = []
    drift_score: list[float | None] = []
    """PSI (older agents) or the effect against the device's baseline once it has one."""
    drift_reference: list[float | None] = []
    """Jensen-Shannon distance of the window against the package reference."""
    drift_baseline: list[float | None] = []
    """Jensen-Shannon distance of the window against the device's burn-in baseline."""
    drift_alert: list[bool | None] = []
    drift_joint: list[float | None] = []
    """Jensen-Shannon distance of the rows' PCA statistics (how the features move together)
    against the baseline, else the reference; None without a PCA in the package."""
    drift_features: dict[str, list[float | None]] = {}
    """Per-feature drift of the most drifted features ("f12" -> one value per batch): PSI
    from older agents, the Jensen-Shannon distance (baseline, else reference) from current."""
    spool_depth: list[int] = []
    spool_dropped: list[int] = []


def feature_drift(drift: DriftReport | DriftStats | None) -> dict[int, float]:
    """The per-feature values one batch carries (see :attr:`DeviceSeries.drift_features`)."""
    if drift is None:
        return {}
    if isinstance(drift, DriftStats):
        return {f.feature: f.psi for f in drift.features}
    return {f.feature: f.effect for f in (drift.baseline or drift.reference).features}


def series_of(device_id: str, batches: Sequence[Telemetry]) -> DeviceSeries:
    out = DeviceSeries(device_id=device_id)
    peaks: dict[int, float] = {}
    for b in batches:
        for k, v in feature_drift(b.drift).items():
            peaks[k] = max(peaks.get(k, 0.0), v)
    chosen = sorted(peaks, key=lambda k: (-peaks[k], k))[:MAX_FEATURES]
    out.drift_features = {f"f{k}": [] for k in sorted(chosen)}
    for b in sorted(batches, key=lambda b: b.ts):
        inf, lat, sysm, drift = b.inference, b.inference and b.inference.latency, b.system, b.drift
        out.ts.append(b.ts)
        out.latency_p50_ms.append(lat.p50_ms if lat else None)
        out.latency_p95_ms.append(lat.p95_ms if lat else None)
        out.latency_p99_ms.append(lat.p99_ms if lat else None)
        out.throughput_per_s.append(inf.throughput_per_s if inf else None)
        out.errors.append(inf.errors if inf else None)
        out.cpu_percent.append(sysm.cpu_percent if sysm else None)
        out.mem_percent.append(
            100.0 * sysm.mem_used_bytes / sysm.mem_total_bytes
            if sysm and sysm.mem_total_bytes
            else None
        )
        out.rss_mb.append(sysm.rss_bytes / 2**20 if sysm else None)
        out.confidence_mean.append(inf.mean_confidence if inf else None)
        out.drift_score.append(drift.score if drift else None)
        report = drift if isinstance(drift, DriftReport) else None
        out.drift_reference.append(report.reference.effect if report else None)
        out.drift_baseline.append(report.baseline.effect if report and report.baseline else None)
        out.drift_alert.append(report.alert if report else None)
        out.drift_joint.append(_joint(report))
        values = feature_drift(drift)
        for k in chosen:
            # a feature missing from a batch's top list drifted less than the ones listed
            out.drift_features[f"f{k}"].append(values.get(k) if drift else None)
        out.spool_depth.append(b.spool.depth)
        out.spool_dropped.append(b.spool.dropped_total)
    return out


def _joint(report: DriftReport | None) -> float | None:
    mv = report.multivariate if report else None
    if mv is None:
        return None
    return (mv.baseline or mv.reference).effect
