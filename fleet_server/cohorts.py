"""Fleet and cohort views of drift, accuracy and latency (pure).

Each chi-squared drift report carries the window's histograms over the package
reference's bins, so windows of one model version add up across devices and
time.  A cohort (the devices sharing a tag value, or all of one version) is
judged by its merged histogram against the merged histogram of the rest of the
fleet on the same version, with the same test the devices run
(:func:`edgefleet_contract.drifttest.compare`): a slice that sees different
inputs than its peers shows up even when every device in it is "normal for
itself".  When the package ships a PCA, the windows also carry histograms of
each row's reconstruction error and T^2 (:mod:`edgefleet_contract.multivariate`),
merged and tested the same way: a slice whose features move together
differently from its peers' shows there even when every marginal matches.
Accuracy per slice comes from feedback labels with an exact
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
    multivariate: npt.NDArray[np.float64] | None = None
    """Counts of the rows' PCA statistics (``spe``, ``t2``), when the package has a PCA."""


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
    multivariate_p_value: float | None = None
    """The PCA statistics of the slice against the rest (None: no PCA in the package)."""
    multivariate_effect: float | None = None

    @property
    def significant(self) -> bool:
        """Either family at ``ALPHA``, Bonferroni across the two (as on the devices)."""
        ps = [p for p in (self.p_value, self.multivariate_p_value) if p is not None]
        return bool(ps) and min(ps) * len(ps) <= ALPHA


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
    mv = _merged_multivariate(groups)
    mv_total = np.sum(list(mv.values()), axis=0) if mv else None
    slices = [
        _slice(key, groups[key], merged[key], total, mv.get(key), mv_total)
        for key in sorted(groups)
    ]
    significant = [s for s in slices if s.significant]
    labelled = [s for s in slices if s.accuracy_high is not None]
    return CohortView(
        model=model,
        version=version,
        by=by,
        slices=slices,
        worst_drift=max(
            significant, key=lambda s: max(s.effect or 0.0, s.multivariate_effect or 0.0)
        ).key
        if significant
        else None,
        worst_accuracy=min(labelled, key=lambda s: s.accuracy_high or 0.0).key
        if labelled
        else None,
    )


def _slice(
    key: str,
    windows: list[DriftWindow],
    merged: npt.NDArray[np.float64],
    total: npt.NDArray[np.float64],
    mv: npt.NDArray[np.float64] | None = None,
    mv_total: npt.NDArray[np.float64] | None = None,
) -> Slice:
    rest = total - merged
    effect = p = mv_p = mv_effect = None
    drifted = 0
    if rest.sum() > 0:
        tests = compare(merged, rest)
        effect, p, drifted = float(tests.effect.max()), tests.window_p, tests.drifted(ALPHA)
    if mv is not None and mv_total is not None and (mv_total - mv).sum() > 0:
        mv_tests = compare(mv, mv_total - mv)
        mv_p, mv_effect = mv_tests.window_p, float(mv_tests.effect.max())
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
        multivariate_p_value=mv_p,
        multivariate_effect=mv_effect,
    )


def _merged_multivariate(
    groups: dict[str, list[DriftWindow]],
) -> dict[str, npt.NDArray[np.float64]]:
    """Per slice, the summed PCA statistics of its windows that carry them (one layout:
    windows of another shape, from a package with another PCA, are left out)."""
    shapes = [
        w.multivariate.shape for g in groups.values() for w in g if w.multivariate is not None
    ]
    if not shapes:
        return {}
    rows = max(s[0] for s in shapes)
    width = max(s[1] for s in shapes if s[0] == rows)
    out: dict[str, npt.NDArray[np.float64]] = {}
    for key, windows in groups.items():
        parts = [
            _widen(w.multivariate, width)
            for w in windows
            if w.multivariate is not None and w.multivariate.shape[0] == rows
        ]
        if parts:
            out[key] = np.sum(parts, axis=0)
    return out


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
