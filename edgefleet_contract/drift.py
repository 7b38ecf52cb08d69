"""Reference feature statistics for drift detection.

A model package ships, per input feature, the bin edges of its training data and
the proportion of training samples in each bin.  The agent bins live inputs the
same way and compares with the Population Stability Index, which needs no raw
data on the device and costs one ``searchsorted`` per feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import ModelError


class FeatureReference(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    edges: Annotated[list[float], Field(max_length=255)]
    """Interior bin edges, ascending: ``k - 1`` edges make ``k`` bins."""
    expected: Annotated[list[float], Field(min_length=1, max_length=256)]
    """Share of the reference samples in each bin; sums to 1."""

    @model_validator(mode="after")
    def _consistent(self) -> FeatureReference:
        if len(self.expected) != len(self.edges) + 1:
            raise ValueError("expected needs exactly one entry more than edges")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must be strictly ascending")
        if any(p < 0 for p in self.expected) or abs(sum(self.expected) - 1.0) > 1e-3:
            raise ValueError("expected must be non-negative proportions summing to 1")
        return self


class DriftReference(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    samples: Annotated[int, Field(ge=1)]
    """How many reference samples the proportions come from."""
    features: Annotated[list[FeatureReference], Field(min_length=1, max_length=65536)]


# ------------------------------------------------------------- numerics ----
#
# Pure numpy, shared by the agent (scoring live inputs) and the server (building
# references from training data, re-scoring).  Bin convention everywhere: a
# value ``v`` falls in bin ``searchsorted(edges, v, side="right")``, so a value
# equal to an edge belongs to the bin above it.  Non-finite live values (a NaN
# from a broken sensor) go to an extra "missing" bin whose expected share is 0:
# a feature that starts arriving as NaN shows up as drift instead of vanishing.

PSI_EPSILON = 1e-4
"""Floor for a bin's proportion, so an empty bin costs a bounded, not infinite, PSI."""


def build_reference(x: npt.ArrayLike, *, bins: int = 10) -> DriftReference:
    """Reference statistics of a training matrix ``(samples, features)``.

    Each feature gets a fixed bin layout that the statistical test can use:

    * an **out-of-range bin** on each side (below the training minimum, above the
      maximum), expected share 0, so values never seen in training stand out;
    * **value-level bins** ``[v - d, v + d)`` for the values that carry a large share
      (the 0 of an almost-always-0 pixel) and for every value of a discrete feature
      (few distinct values), with the gaps between values as bins of their own: a
      near-constant feature keeps the resolution quantile bins took from it;
    * **quantile bins** over the remaining, continuous values.

    The format is the one older agents read (interior edges + shares): they score PSI
    on this layout unchanged.
    """
    data = _training_matrix(x, bins)
    features = []
    for column in data.T:
        edges = _layout(column, bins)
        counts = np.bincount(np.searchsorted(edges, column, side="right"), minlength=edges.size + 1)
        features.append(
            FeatureReference(edges=edges.tolist(), expected=(counts / column.size).tolist())
        )
    return DriftReference(samples=data.shape[0], features=features)


def quantile_reference(x: npt.ArrayLike, *, bins: int = 10) -> DriftReference:
    """The earlier layout: interior quantiles only, de-duplicated (what PSI was scored on).

    Kept to compare the statistics side by side on the same data; packages use
    :func:`build_reference`.
    """
    data = _training_matrix(x, bins)
    quantiles = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    features = []
    for column in data.T:
        edges = np.unique(np.quantile(column, quantiles))
        counts = np.bincount(np.searchsorted(edges, column, side="right"), minlength=edges.size + 1)
        features.append(
            FeatureReference(edges=edges.tolist(), expected=(counts / column.size).tolist())
        )
    return DriftReference(samples=data.shape[0], features=features)


def _training_matrix(x: npt.ArrayLike, bins: int) -> npt.NDArray[np.float64]:
    data = np.asarray(x, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] == 0:
        raise ModelError(
            "a drift reference needs a non-empty (samples, features) matrix, "
            f"got shape {data.shape}"
        )
    if not 2 <= bins <= 256:
        raise ModelError(f"bins must be between 2 and 256, got {bins}")
    if not np.isfinite(data).all():
        raise ModelError("the training matrix has NaN or infinite values; clean it first")
    return data


MAX_EDGES = 255
HEAVY_SHARE = 0.05
"""A value holding at least this share of the training rows (and 1/bins) gets its own bin."""


def _layout(column: npt.NDArray[np.float64], bins: int) -> npt.NDArray[np.float64]:
    """Interior edges for one feature (see :func:`build_reference`)."""
    values, counts = np.unique(column, return_counts=True)
    discrete = values.size <= min(2 * bins, 60)
    share = counts / column.size
    heavy = values if discrete else values[share >= max(HEAVY_SHARE, 1.0 / bins)]
    edges: list[float] = []
    for v in heavy:
        d = _half_width(float(v), values)
        edges += [float(v) - d, float(v) + d]
    rest = column[~np.isin(column, heavy)]
    if rest.size:
        room = max(0, MAX_EDGES - 2 - len(edges))
        q = np.linspace(0.0, 1.0, min(bins, room + 1) + 1)[1:-1]
        edges += np.quantile(rest, q).tolist()
        edges += [float(rest.min()), float(np.nextafter(rest.max(), np.inf))]
    out = np.unique(np.asarray(edges, dtype=np.float64))
    if out.size > MAX_EDGES:  # keep the value bins, thin the rest evenly
        out = out[np.linspace(0, out.size - 1, MAX_EDGES).round().astype(int)]
        out = np.unique(out)
    return out


def _half_width(v: float, values: npt.NDArray[np.float64]) -> float:
    """Half the width of a value bin: float32 rounding fits inside, neighbours do not."""
    d = 1e-6 * max(1.0, abs(v))
    i = int(np.searchsorted(values, v))
    gaps = [values[i] - values[i - 1]] if i > 0 else []
    if i + 1 < values.size:
        gaps.append(values[i + 1] - values[i])
    return float(min([d] + [float(g) / 4 for g in gaps]))


class CompiledReference:
    """A :class:`DriftReference` turned into numpy arrays once, for repeated scoring."""

    def __init__(self, reference: DriftReference) -> None:
        self.samples = reference.samples
        self.edges = [np.asarray(f.edges, dtype=np.float64) for f in reference.features]
        # float32 rows (what the agent keeps) compare with each edge rounded up to float32:
        # for a float32 v, v < e exactly when v < ceil32(e).
        self._edges32 = [_ceil32(e) for e in self.edges]
        # One extra bin at the end for non-finite values, never seen in training.
        self.expected = [
            np.append(np.asarray(f.expected, dtype=np.float64), 0.0) for f in reference.features
        ]

    @property
    def width(self) -> int:
        return len(self.edges)

    @property
    def bins(self) -> int:
        """Columns of :meth:`histogram`: the widest feature's bins plus the non-finite bin."""
        return max(e.size for e in self.edges) + 2

    def reference_counts(self) -> npt.NDArray[np.float64]:
        """The reference as a ``(features, bins)`` matrix of (fractional) sample counts."""
        out = np.zeros((self.width, self.bins), dtype=np.float64)
        for j, expected in enumerate(self.expected):
            out[j, : expected.size - 1] = expected[:-1] * self.samples
        return out

    def histogram(self, rows: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Per feature, counts of ``rows`` in each bin, as a ``(features, bins)`` matrix.

        Features with fewer bins leave their tail columns at 0; the last column of
        every feature counts non-finite values.  Matrices of the same reference add
        up, which is what makes windows mergeable across devices and time.
        """
        data = np.asarray(rows)
        if data.dtype != np.float32:
            data = data.astype(np.float64, copy=False)
        data = self._matrix(data)
        columns = np.ascontiguousarray(np.where(np.isfinite(data), data, np.nan).T)
        columns.sort(axis=1)  # NaN last
        edges: Sequence[npt.NDArray[np.floating[Any]]] = (
            self._edges32 if columns.dtype == np.float32 else self.edges
        )
        finite = np.count_nonzero(~np.isnan(columns), axis=1)
        # below[j, i]: values of feature j under its edge i; past its last edge, all finite.
        below = np.repeat(finite[:, None], self.bins, axis=1)
        below[:, 0] = 0
        for j, e in enumerate(edges):
            below[j, 1 : e.size + 1] = np.searchsorted(columns[j], e, side="left")
        out = np.zeros((self.width, self.bins), dtype=np.int64)
        out[:, :-1] = below[:, 1:] - below[:, :-1]
        out[:, -1] = columns.shape[1] - finite
        return out

    def _matrix(self, rows: npt.ArrayLike) -> npt.NDArray[np.floating[Any]]:
        data = np.asarray(rows)
        if data.dtype not in (np.float32, np.float64):
            data = data.astype(np.float64)
        if data.ndim == 1:
            data = data.reshape(1, -1)
        if data.ndim != 2 or data.shape[1] != self.width:  # also the histogram's check
            raise ModelError(
                f"inputs have shape {data.shape}, but the drift reference describes "
                f"{self.width} features per row"
            )
        return data

    def bin_counts(self, rows: npt.ArrayLike) -> list[npt.NDArray[np.int64]]:
        """Per feature, how many of ``rows`` fall in each bin (last bin: non-finite)."""
        data = self._matrix(rows)
        finite = np.isfinite(data)
        out = []
        for j, edges in enumerate(self.edges):
            column = data[:, j]
            index = np.where(
                finite[:, j], np.searchsorted(edges, column, side="right"), edges.size + 1
            )
            out.append(np.bincount(index, minlength=edges.size + 2))
        return out

    def feature_psi(self, rows: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """PSI of each feature of ``rows`` against the reference (empty rows: all zero)."""
        counts = self.bin_counts(rows)
        return np.array(
            [psi(expected, c) for expected, c in zip(self.expected, counts, strict=True)],
            dtype=np.float64,
        )


def _ceil32(edges: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    low = edges.astype(np.float32)
    return np.where(low < edges, np.nextafter(low, np.float32(np.inf)), low).astype(np.float32)


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike, *, eps: float = PSI_EPSILON) -> float:
    """Population Stability Index between two histograms over the same bins.

    Either may be counts or proportions (each is normalised).  Every term
    ``(a - e) * ln(a / e)`` is non-negative, so PSI is 0 exactly when the
    (floored) shares agree and grows with any shift; an empty histogram has no
    evidence of drift and scores 0.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1:
        raise ModelError(f"PSI needs two histograms of the same bins, got {e.shape} and {a.shape}")
    e_total, a_total = e.sum(), a.sum()
    if e_total <= 0 or a_total <= 0:
        return 0.0
    e = np.maximum(e / e_total, eps)
    a = np.maximum(a / a_total, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def feature_psi(reference: DriftReference, rows: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """PSI per feature of ``rows`` ``(samples, features)`` against ``reference``."""
    return CompiledReference(reference).feature_psi(rows)
