"""Gate figures for a wave: fetched from the store at the edge, computed by pure functions.

Only telemetry the devices produced while running the new artifact counts
(``inference.model``/``version`` match), so a batch from just before the
switch cannot hide a regression or fake one.  The confidence baseline is the
same devices' telemetry before the rollout started.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from edgefleet_contract.messages import DriftReport, DriftStats, InferenceStats, Telemetry

from ..cbpe import Calibration, estimate, reference_drift
from ..store.base import Store
from .artifacts import ResolvedArtifact

MAX_DEVICES = 500
"""Devices sampled per evaluation (the first ones in rollout order); bounds the cost."""
MAX_BATCHES = 5000
BASELINE_S = 3600.0


def _is_new(t: Telemetry, artifact: ResolvedArtifact) -> bool:
    if artifact.kind == "firmware":
        return True
    inf = t.inference
    return inf is not None and inf.model == artifact.name and inf.version == artifact.version


def _boots(batches: Sequence[Telemetry]) -> int:
    return len({b.batch_id.partition("-")[0] for b in batches})


def _split(
    after: Mapping[str, Sequence[Telemetry]],
    before: Mapping[str, Sequence[Telemetry]],
    artifact: ResolvedArtifact,
) -> tuple[list[Telemetry], list[InferenceStats], list[InferenceStats]]:
    """The new version's batches and inference stats, and the old version's from before."""
    new = [t for batches in after.values() for t in batches if _is_new(t, artifact)]
    inf = [t.inference for t in new if t.inference is not None]
    old = [
        t.inference
        for batches in before.values()
        for t in batches
        if t.inference is not None and not _is_new(t, artifact)
    ]
    return new, inf, old


def _confidence_weight(stats: Sequence[InferenceStats]) -> int:
    return sum(sum(s.confidence_hist) for s in stats)


def figures(
    after: Mapping[str, Sequence[Telemetry]],
    before: Mapping[str, Sequence[Telemetry]],
    health: Mapping[str, str | None],
    artifact: ResolvedArtifact,
) -> dict[str, float | None]:
    """The gate metrics (see :mod:`.gates`) from each device's batches after and before."""
    new, inf, old = _split(after, before, artifact)
    count = sum(s.count for s in inf)
    errors = sum(s.errors for s in inf)
    fb_n = sum(s.feedback_count for s in inf)
    fb_ok = sum(s.feedback_correct for s in inf)
    p95 = [s.latency.p95_ms for s in inf if s.latency is not None]
    drift = [t.drift.score for t in new if t.drift is not None]
    js = [t.drift.score for t in new if isinstance(t.drift, DriftReport)]
    psi = [t.drift.score for t in new if isinstance(t.drift, DriftStats)]
    conf_before = InferenceStats.pooled_confidence(old)
    conf_after = InferenceStats.pooled_confidence(inf)
    loops = sum(
        1
        for device_id in set(after) | set(health)
        if health.get(device_id) == "failed" or _boots(after.get(device_id, ())) >= 3
    )
    return {
        "error_rate": errors / count if count else None,
        "p95_latency_ms": sum(p95) / len(p95) if p95 else None,
        "accuracy": fb_ok / fb_n if fb_n else None,
        "confidence_drop": (
            conf_before - conf_after if conf_before is not None and conf_after is not None else None
        ),
        "drift": max(drift) if drift else None,
        "drift_js": max(js) if js else None,
        "drift_psi": max(psi) if psi else None,
        "crash_loops": float(loops),
    }


def samples(
    after: Mapping[str, Sequence[Telemetry]],
    before: Mapping[str, Sequence[Telemetry]],
    artifact: ResolvedArtifact,
) -> dict[str, int]:
    """The observations behind each traffic metric of :func:`figures` (see ``EVIDENCE``).

    ``confidence_drop`` compares two sides, so it counts the smaller one: a
    thousand answers after the switch say nothing against three before it.
    """
    new, inf, old = _split(after, before, artifact)
    count = sum(s.count for s in inf)
    return {
        "error_rate": count,
        "p95_latency_ms": sum(s.count for s in inf if s.latency is not None),
        "accuracy": sum(s.feedback_count for s in inf),
        "confidence_drop": min(_confidence_weight(old), _confidence_weight(inf)),
        "drift": sum(t.drift.samples for t in new if t.drift is not None),
        "drift_js": sum(t.drift.samples for t in new if isinstance(t.drift, DriftReport)),
        "drift_psi": sum(t.drift.samples for t in new if isinstance(t.drift, DriftStats)),
    }


def shadow_figures(
    batches: Mapping[str, Sequence[Telemetry]], artifact: ResolvedArtifact
) -> tuple[dict[str, float | None], dict[str, int]]:
    """The shadow step's gate figures: what devices running ``artifact`` in the shadow of
    their active model reported (see :class:`~edgefleet_contract.messages.ShadowStats`)."""
    runs = [
        t.shadow
        for rows in batches.values()
        for t in rows
        if t.shadow is not None
        and t.shadow.model == artifact.name
        and t.shadow.version == artifact.version
    ]
    n = sum(s.samples for s in runs)
    labelled = sum(s.labelled for s in runs)
    delta = sum(s.candidate_correct - s.active_correct for s in runs)
    p95 = [s.latency.p95_ms for s in runs if s.latency is not None]
    values = {
        "shadow_agreement": sum(s.agreed for s in runs) / n if n else None,
        "shadow_accuracy_delta": delta / labelled if labelled else None,
        "shadow_p95_latency_ms": sum(p95) / len(p95) if p95 else None,
    }
    counts = {
        "shadow_agreement": n,
        "shadow_accuracy_delta": labelled,
        "shadow_p95_latency_ms": sum(s.samples for s in runs if s.latency is not None),
        "shadow_dropped": sum(s.dropped for s in runs),
        "shadow_errors": sum(s.errors for s in runs),
    }
    if runs and all(s.discordant is not None for s in runs):  # agents that pair the labels
        counts["shadow_pairs"] = labelled
        counts["shadow_pairs_new_correct"] = sum(s.candidate_correct for s in runs)
        counts["shadow_pairs_parent_correct"] = sum(s.active_correct for s in runs)
        counts["shadow_pairs_discordant"] = sum(s.discordant or 0 for s in runs)
    return values, counts


def parent_labels(
    batches: Mapping[str, Sequence[Telemetry]], parent: str
) -> tuple[float | None, int]:
    """The parent's feedback accuracy over ``batches`` and the labels behind it."""
    name, _, version = parent.partition("@")
    stats = [
        t.inference
        for rows in batches.values()
        for t in rows
        if t.inference is not None and t.inference.model == name and t.inference.version == version
    ]
    n = sum(s.feedback_count for s in stats)
    return (sum(s.feedback_correct for s in stats) / n if n else None), n


def label_free(
    batches: Mapping[str, Sequence[Telemetry]], label: str, calibration: Calibration | None
) -> tuple[float | None, int]:
    """The CBPE estimate of ``label``'s accuracy over ``batches`` and the answers behind it;
    None when there is no calibration or the estimate says it cannot be trusted."""
    if calibration is None:
        return None, 0
    name, _, version = label.partition("@")
    hist = [0] * len(calibration.counts)
    drift: list[float] = []
    for rows in batches.values():
        for t in rows:
            inf = t.inference
            if inf is None or inf.model != name or inf.version != version:
                continue
            if len(inf.confidence_hist) == len(hist):
                hist = [a + b for a, b in zip(hist, inf.confidence_hist, strict=True)]
            shift = reference_drift(t.drift)
            if shift is not None:
                drift.append(shift)
    est = estimate(hist, calibration, drift=max(drift) if drift else None)
    return (est.accuracy, est.answers) if est.trusted else (None, est.answers)


def measure(
    store: Store,
    device_ids: Sequence[str],
    artifact: ResolvedArtifact,
    *,
    since: float,
    until: float,
    baseline_until: float,
    parent: str | None = None,
    cohort: Sequence[str] = (),
    calibrations: Callable[[str], Calibration | None] | None = None,
) -> tuple[dict[str, float | None], dict[str, int]]:
    """The wave's gate figures and the observations behind them, from the store.

    With a ``parent`` (the champion), its feedback accuracy is measured on the
    rollout's whole ``cohort`` from an hour before the rollout until ``until``:
    the same devices and the same period as the new version, whatever wave they
    are in (figure and count ``parent_accuracy``).  With ``calibrations`` (a
    version's label -> its package calibration), both sides also get the
    label-free estimate (``accuracy_estimate``, ``parent_accuracy_estimate``),
    for the gate to use where there are no labels.
    """
    chosen = list(device_ids)[:MAX_DEVICES]
    after = {d: store.query_raw(d, since=since, until=until, limit=MAX_BATCHES) for d in chosen}
    before = {
        d: store.query_raw(
            d, since=baseline_until - BASELINE_S, until=baseline_until, limit=MAX_BATCHES
        )
        for d in chosen
    }
    health = {d: store.get_device(d).health for d in chosen}
    values, counts = figures(after, before, health, artifact), samples(after, before, artifact)
    shadow_values, shadow_counts = shadow_figures(after, artifact)
    values.update(shadow_values)
    counts.update(shadow_counts)
    if parent is not None:
        rows = {
            d: store.query_raw(d, since=baseline_until - BASELINE_S, until=until, limit=MAX_BATCHES)
            for d in list(cohort)[:MAX_DEVICES]
        }
        values["parent_accuracy"], counts["parent_accuracy"] = parent_labels(rows, parent)
        if calibrations is not None:
            new = label_free(after, artifact.label, calibrations(artifact.label))
            old = label_free(rows, parent, calibrations(parent))
            values["accuracy_estimate"], counts["accuracy_estimate"] = new
            values["parent_accuracy_estimate"], counts["parent_accuracy_estimate"] = old
    return values, counts
