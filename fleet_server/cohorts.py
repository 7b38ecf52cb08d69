"""Fleet and cohort views of drift, accuracy and latency (pure).

Each chi-squared drift report carries the window's histograms over the package
reference's bins, so windows of one model version add up across devices and
time.  A cohort (the devices sharing a tag value, or all of one version) is
judged by its merged histogram against the merged histogram of the rest of the
fleet on the same version, with the same test the devices run
(:func:`edgefleet_contract.drifttest.compare`): a slice that sees different
inputs than its peers shows up even when every device in it is "normal for
itself".  Accuracy per slice comes from feedback labels with an exact
(Clopper-Pearson) 95% interval, from scipy, because slices often hold few labels and
a normal approximation would claim a precision the counts do not have.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edgefleet_contract.drifttest import compare

from .versions import version_key

ALPHA = 0.01


@dataclass(frozen=True)
class DriftWindow:
    """One stored chi-squared drift report, as the cohort view needs it."""

    device_id: str
    ts: float
    model: str
    version: str
    histograms: npt.NDArray[np.float64]
    alert: bool
    baseline_effect: float | None
    feedback_count: int = 0
    feedback_correct: int = 0
    p95_ms: float | None = None


@dataclass(frozen=True)
class Slice:
    key: str
    devices: int
    windows: int
    samples: int
    alerting: int
    """Devices whose newest window in the range alerts (changed from their own normal)."""
    effect: float | None
    """Jensen-Shannon distance (largest over features) of the slice against the rest."""
    p_value: float | None
    drifted_features: int
    labels: int
    accuracy: float | None
    accuracy_low: float | None
    accuracy_high: float | None
    p95_ms: float | None


@dataclass(frozen=True)
class CohortView:
    model: str
    version: str
    by: str
    slices: list[Slice] = field(default_factory=list)
    worst_drift: str | None = None
    """The slice that differs most from the rest (significant at ALPHA), if any."""
    worst_accuracy: str | None = None
    """The slice with the lowest upper accuracy bound, if any has labels."""


def cohort_views(
    windows: Sequence[DriftWindow], cohort_of: Callable[[str], str], *, by: str
) -> list[CohortView]:
    """One view per model version seen in ``windows``, slices keyed by ``cohort_of``."""
    versions: dict[tuple[str, str], list[DriftWindow]] = defaultdict(list)
    for w in windows:
        versions[(w.model, w.version)].append(w)
    return [
        _view(model, version, group, cohort_of, by)
        for (model, version), group in sorted(
            versions.items(), key=lambda item: (item[0][0], version_key(item[0][1]))
        )
    ]


def _view(
    model: str,
    version: str,
    windows: list[DriftWindow],
    cohort_of: Callable[[str], str],
    by: str,
) -> CohortView:
    features = max(w.histograms.shape[0] for w in windows)
    width = max(w.histograms.shape[1] for w in windows if w.histograms.shape[0] == features)
    groups: dict[str, list[DriftWindow]] = defaultdict(list)
    for w in windows:
        if w.histograms.shape[0] == features:  # another feature count: a changed model
            groups[cohort_of(w.device_id)].append(w)
    merged = {
        k: np.sum([_widen(w.histograms, width) for w in g], axis=0) for k, g in groups.items()
    }
    total = np.sum(list(merged.values()), axis=0)
    slices = [_slice(key, groups[key], merged[key], total) for key in sorted(groups)]
    significant = [s for s in slices if s.p_value is not None and s.p_value <= ALPHA]
    labelled = [s for s in slices if s.accuracy_high is not None]
    return CohortView(
        model=model,
        version=version,
        by=by,
        slices=slices,
        worst_drift=max(significant, key=lambda s: s.effect or 0.0).key if significant else None,
        worst_accuracy=min(labelled, key=lambda s: s.accuracy_high or 0.0).key
        if labelled
        else None,
    )


def _slice(
    key: str,
    windows: list[DriftWindow],
    merged: npt.NDArray[np.float64],
    total: npt.NDArray[np.float64],
) -> Slice:
    rest = total - merged
    effect = p = None
    drifted = 0
    if rest.sum() > 0:
        tests = compare(merged, rest)
        effect, p, drifted = float(tests.effect.max()), tests.window_p, tests.drifted(ALPHA)
    newest: dict[str, DriftWindow] = {}
    for w in windows:
        if w.device_id not in newest or w.ts > newest[w.device_id].ts:
            newest[w.device_id] = w
    labels = sum(w.feedback_count for w in windows)
    correct = sum(w.feedback_correct for w in windows)
    low, high = _interval(correct, labels)
    p95 = [w.p95_ms for w in windows if w.p95_ms is not None]
    return Slice(
        key=key,
        devices=len(newest),
        windows=len(windows),
        samples=int(merged[0].sum()) if merged.size else 0,
        alerting=sum(w.alert for w in newest.values()),
        effect=effect,
        p_value=p,
        drifted_features=drifted,
        labels=labels,
        accuracy=correct / labels if labels else None,
        accuracy_low=low,
        accuracy_high=high,
        p95_ms=float(np.mean(p95)) if p95 else None,
    )


def padded(rows: Sequence[Sequence[float]]) -> npt.NDArray[np.float64]:
    """Ragged per-feature counts (trailing zeros trimmed on the wire) as one matrix."""
    width = max((len(r) for r in rows), default=0)
    out = np.zeros((len(rows), width), dtype=np.float64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _widen(hist: npt.NDArray[np.float64], width: int) -> npt.NDArray[np.float64]:
    if hist.shape[1] == width:
        return hist
    return np.pad(hist, ((0, 0), (0, width - hist.shape[1])))


def _interval(correct: int, labels: int) -> tuple[float | None, float | None]:
    if labels <= 0:
        return None, None
    from scipy.stats import binomtest

    ci = binomtest(min(correct, labels), labels).proportion_ci(0.95, method="exact")
    return float(ci.low), float(ci.high)
