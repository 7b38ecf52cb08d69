"""Drift tests on fixed-bin histograms: chi-squared with sample-size awareness.

Both sides of a comparison are ``(features, bins)`` count matrices over the same
bin layout (:meth:`~.drift.CompiledReference.histogram`): a window against the
package reference, or a window against the device's own burn-in baseline.  Per
feature:

* **test**: the two-sample chi-squared test of homogeneity on the 2 x k table.
  Adjacent bins are merged until the smaller sample expects at least
  :data:`MIN_EXPECTED` rows in each, judged on the pooled counts (the sufficient
  statistic under "no drift", so merging does not bias the test); bins empty in
  both samples drop out.  A 200-row window thus gets few, well-filled cells and a
  20,000-row one many: the same test stays calibrated at any size.
* **p-value**: chi-squared survival by the Wilson-Hilferty cube-root normal
  approximation (numpy and ``math.erfc`` only; within a few percent of the exact
  value where it matters, see the tests against scipy).
* **multiplicity**: Benjamini-Hochberg across the features of a window; the
  window's p-value is the smallest adjusted one (Simes' test of "no feature drifted").
* **effect size**: Jensen-Shannon distance (base 2, 0 = same, 1 = disjoint) of the
  merged histograms.  It does not saturate the way PSI does, and it is reported
  beside the p-value because with enough rows a negligible shift is significant.

Pure numpy; the agent runs it once per window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .errors import ModelError

MIN_EXPECTED = 5.0
"""Rows the smaller sample must expect in a merged cell (Cochran's rule of thumb)."""

_erfc = np.frompyfunc(math.erfc, 1, 1)


@dataclass(frozen=True)
class FeatureTests:
    """Per-feature results of one comparison (arrays of length ``features``)."""

    statistic: npt.NDArray[np.float64]
    dof: npt.NDArray[np.int64]
    p_value: npt.NDArray[np.float64]
    """Raw per-feature p-values."""
    adjusted: npt.NDArray[np.float64]
    """Benjamini-Hochberg adjusted p-values (q-values)."""
    effect: npt.NDArray[np.float64]
    """Jensen-Shannon distance per feature."""

    @property
    def window_p(self) -> float:
        """Simes p-value of the window: the smallest adjusted p (1.0 with no features)."""
        return float(self.adjusted.min()) if self.adjusted.size else 1.0

    def drifted(self, alpha: float) -> int:
        """Features whose adjusted p-value is at most ``alpha`` (false discovery rate)."""
        return int((self.adjusted <= alpha).sum())


def chi2_sf(statistic: npt.ArrayLike, dof: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Survival function of chi-squared (Wilson-Hilferty); ``dof`` 0 gives 1.0."""
    x = np.asarray(statistic, dtype=np.float64)
    k = np.asarray(dof, dtype=np.float64)
    safe = np.maximum(k, 1.0)
    c = 2.0 / (9.0 * safe)
    z = (np.cbrt(np.maximum(x, 0.0) / safe) - (1.0 - c)) / np.sqrt(c)
    p = 0.5 * _erfc(z / math.sqrt(2.0)).astype(np.float64)
    return np.where(k > 0, np.clip(p, 0.0, 1.0), 1.0)


def benjamini_hochberg(p: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Benjamini-Hochberg adjusted p-values, in the order given."""
    values = np.asarray(p, dtype=np.float64)
    m = values.size
    if m == 0:
        return values
    order = np.argsort(values)
    ranked = values[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m, dtype=np.float64)
    out[order] = np.minimum(ranked, 1.0)
    return out


def compare(
    window: npt.ArrayLike, baseline: npt.ArrayLike, *, min_expected: float = MIN_EXPECTED
) -> FeatureTests:
    """Test each feature of ``window`` against ``baseline`` (both ``(features, bins)``)."""
    a = np.asarray(window, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ModelError(
            f"drift histograms must share one (features, bins) layout, got {a.shape} and {b.shape}"
        )
    if min_expected <= 0:
        raise ModelError(f"min_expected must be positive, got {min_expected}")
    features = a.shape[0]
    stat = np.zeros(features)
    dof = np.zeros(features, dtype=np.int64)
    effect = np.zeros(features)
    for j in range(features):
        ga, gb = _merge(a[j], b[j], min_expected)
        stat[j], dof[j] = _chi2(ga, gb)
        effect[j] = js_distance(ga, gb)
    p = chi2_sf(stat, dof)
    return FeatureTests(stat, dof, p, benjamini_hochberg(p), effect)


def _merge(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], min_expected: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Merge adjacent bins until the smaller sample expects ``min_expected`` per cell."""
    na, nb = a.sum(), b.sum()
    if na <= 0 or nb <= 0:
        return np.zeros(1), np.zeros(1)
    pooled = a + b
    keep = pooled > 0
    a, b, pooled = a[keep], b[keep], pooled[keep]
    share = min(na, nb) / (na + nb)
    ends = []
    acc = 0.0
    for i, t in enumerate(pooled):
        acc += t * share
        if acc >= min_expected:
            ends.append(i + 1)
            acc = 0.0
    if not ends or ends[-1] != pooled.size:
        if ends:
            ends[-1] = pooled.size  # a short tail joins the last full cell
        else:
            ends = [pooled.size]
    starts = [0, *ends[:-1]]
    return np.add.reduceat(a, starts), np.add.reduceat(b, starts)


def _chi2(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> tuple[float, int]:
    if a.size < 2:
        return 0.0, 0
    na, nb = a.sum(), b.sum()
    pooled = a + b
    ea, eb = pooled * (na / (na + nb)), pooled * (nb / (na + nb))
    stat = float((((a - ea) ** 2) / ea).sum() + (((b - eb) ** 2) / eb).sum())
    return stat, a.size - 1


def js_distance(p: npt.ArrayLike, q: npt.ArrayLike) -> float:
    """Jensen-Shannon distance (base 2) between two histograms; 0 if either is empty."""
    x = np.asarray(p, dtype=np.float64)
    y = np.asarray(q, dtype=np.float64)
    sx, sy = x.sum(), y.sum()
    if sx <= 0 or sy <= 0:
        return 0.0
    x, y = x / sx, y / sy
    m = (x + y) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kx = np.where(x > 0, x * np.log2(x / m), 0.0).sum()
        ky = np.where(y > 0, y * np.log2(y / m), 0.0).sum()
    return float(math.sqrt(max(0.0, (kx + ky) / 2)))
