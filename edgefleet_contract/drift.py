"""Reference feature statistics for drift detection.

A model package ships, per input feature, the bin edges of its training data and
the proportion of training samples in each bin.  The agent bins live inputs the
same way and compares with the Population Stability Index, which needs no raw
data on the device and costs one ``searchsorted`` per feature.
"""

from __future__ import annotations

from typing import Annotated

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

    Edges are the interior quantiles of each feature, de-duplicated, so a
    feature with few distinct values (one-hot, constant) gets fewer, non-empty
    bins rather than zero-width ones.
    """
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
    quantiles = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    features = []
    for column in data.T:
        edges = np.unique(np.quantile(column, quantiles))
        counts = np.bincount(np.searchsorted(edges, column, side="right"), minlength=edges.size + 1)
        features.append(
            FeatureReference(edges=edges.tolist(), expected=(counts / column.size).tolist())
        )
    return DriftReference(samples=data.shape[0], features=features)


class CompiledReference:
    """A :class:`DriftReference` turned into numpy arrays once, for repeated scoring."""

    def __init__(self, reference: DriftReference) -> None:
        self.samples = reference.samples
        self.edges = [np.asarray(f.edges, dtype=np.float64) for f in reference.features]
        # One extra bin at the end for non-finite values, never seen in training.
        self.expected = [
            np.append(np.asarray(f.expected, dtype=np.float64), 0.0) for f in reference.features
        ]

    @property
    def width(self) -> int:
        return len(self.edges)

    def bin_counts(self, rows: npt.ArrayLike) -> list[npt.NDArray[np.int64]]:
        """Per feature, how many of ``rows`` fall in each bin (last bin: non-finite)."""
        data = np.asarray(rows, dtype=np.float64)
        if data.ndim == 1:
            data = data.reshape(1, -1)
        if data.ndim != 2 or data.shape[1] != self.width:
            raise ModelError(
                f"inputs have shape {data.shape}, but the drift reference describes "
                f"{self.width} features per row"
            )
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
