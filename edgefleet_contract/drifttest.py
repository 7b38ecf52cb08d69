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
* **p-value**: chi-squared survival by the exact finite series for integer degrees of
  freedom (numpy and ``math.erfc`` only; equal to scipy's to 1e-9, see the tests).
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
    """Survival function of chi-squared for integer degrees of freedom; ``dof`` 0 gives 1.0.

    Exact, by the finite series of the regularised upper incomplete gamma function
    at integer and half-integer shape: even ``k = 2m`` gives ``exp(-h) sum_{i<m} h^i/i!``
    with ``h = x/2``; odd ``k = 2m+1`` gives ``erfc(sqrt(h))`` plus the terms
    ``exp(-h) h^(i-1/2) / Gamma(i+1/2)`` for ``i = 1..m``.
    """
    x = np.maximum(np.asarray(statistic, dtype=np.float64), 0.0)
    k = np.asarray(dof, dtype=np.int64)
    x, k = np.broadcast_arrays(x, k)
    half = x / 2.0
    odd = (k % 2) == 1
    terms = np.where(odd, k // 2, k // 2 - 1)
    base = np.exp(-half)
    total = np.where(odd, np.asarray(_erfc(np.sqrt(half)), dtype=np.float64), base)
    term = np.where(odd, base * np.sqrt(half) * (2.0 / math.sqrt(math.pi)), base)
    for i in range(1, int(terms.max(initial=0)) + 1):
        if i > 1:
            term = term * half / np.where(odd, i - 0.5, i)
        else:
            term = np.where(odd, term, term * half)
        total = total + np.where(i <= terms, term, 0.0)
    return np.where(k > 0, np.clip(total, 0.0, 1.0), 1.0)


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
    ga, gb = _merge(a, b, min_expected)
    stat, dof = _chi2(ga, gb)
    effect = _js_rows(ga, gb)
    p = chi2_sf(stat, dof)
    return FeatureTests(stat, dof, p, benjamini_hochberg(p), effect)


def _merge(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], min_expected: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Merge adjacent bins, per feature, until the smaller sample expects
    ``min_expected`` rows per cell; a short tail joins the last full cell.

    Greedy left to right, vectorised across features (one step per bin).
    """
    features, bins = a.shape
    na, nb = a.sum(axis=1), b.sum(axis=1)
    total = na + nb
    share = np.divide(np.minimum(na, nb), total, out=np.zeros(features), where=total > 0)
    expected = (a + b) * share[:, None]
    group = np.empty((features, bins), dtype=np.int64)
    gid = np.zeros(features, dtype=np.int64)
    acc = np.zeros(features)
    for k in range(bins):
        group[:, k] = gid
        acc += expected[:, k]
        full = acc >= min_expected
        gid += full
        acc[full] = 0.0
    # Bins after the last full cell (gid = the open group) join the last full one.
    tail = (group == gid[:, None]) & (gid[:, None] > 0)
    group[tail] -= 1
    flat = (group + np.arange(features)[:, None] * bins).ravel()
    size = features * bins
    ga = np.bincount(flat, weights=a.ravel(), minlength=size).reshape(features, bins)
    gb = np.bincount(flat, weights=b.ravel(), minlength=size).reshape(features, bins)
    return ga.astype(np.float64), gb.astype(np.float64)


def _chi2(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Two-sample chi-squared per row over the cells that hold any rows."""
    na = a.sum(axis=1, keepdims=True)
    nb = b.sum(axis=1, keepdims=True)
    pooled = a + b
    used = pooled > 0
    n = np.maximum(na + nb, 1e-300)
    ea, eb = pooled * (na / n), pooled * (nb / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(used, (a - ea) ** 2 / ea + (b - eb) ** 2 / eb, 0.0)
    terms = np.nan_to_num(terms, nan=0.0, posinf=0.0)
    cells = used.sum(axis=1)
    empty = (na[:, 0] <= 0) | (nb[:, 0] <= 0) | (cells < 2)
    stat = np.where(empty, 0.0, terms.sum(axis=1))
    dof = np.where(empty, 0, cells - 1).astype(np.int64)
    return stat, dof


def _js_rows(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Jensen-Shannon distance (base 2) per row; 0 where either row is empty."""
    sa = a.sum(axis=1, keepdims=True)
    sb = b.sum(axis=1, keepdims=True)
    ok = (sa[:, 0] > 0) & (sb[:, 0] > 0)
    x = a / np.where(sa > 0, sa, 1.0)
    y = b / np.where(sb > 0, sb, 1.0)
    m = (x + y) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kx = np.where(x > 0, x * np.log2(x / m), 0.0).sum(axis=1)
        ky = np.where(y > 0, y * np.log2(y / m), 0.0).sum(axis=1)
    return np.where(ok, np.sqrt(np.clip((kx + ky) / 2, 0.0, 1.0)), 0.0)


def js_distance(p: npt.ArrayLike, q: npt.ArrayLike) -> float:
    """Jensen-Shannon distance (base 2) between two histograms; 0 if either is empty."""
    x = np.asarray(p, dtype=np.float64).reshape(1, -1)
    y = np.asarray(q, dtype=np.float64).reshape(1, -1)
    if x.shape != y.shape:
        raise ModelError(f"histograms differ in bins: {x.shape[1]} and {y.shape[1]}")
    return float(_js_rows(x, y)[0])
