"""Multivariate drift: how well the package's principal components still explain each row.

Per-feature tests see each marginal distribution on its own; a change in how features
move together (two parts of an image that no longer belong to one object, a correlation
whose sign flipped) leaves every marginal unchanged and passes them all.  The builder
therefore fits a PCA on the package's reference rows (standardised, keeping the
components that explain :data:`VARIANCE_KEPT` of the variance) and ships it beside the
manifest as ``drift-pca.json``.  For every row the device computes two statistics:

* ``spe``: the squared prediction error, ``|z|^2 - |z V^T|^2`` for the standardised row
  ``z``: the part of the row the components cannot explain.  Rows whose features stopped
  moving together the way they did in training land off the principal subspace;
* ``t2``: Hotelling's T^2 inside the subspace, ``sum(s_i^2 / lambda_i)``: a row that moves
  along the components further than the reference did.

Both are binned over fixed bins laid out on held-out reference rows (the rows the PCA
was not fitted on, so the reference's own errors are not optimistic), which makes them
two more rows of the same mergeable ``(statistics, bins)`` histograms the per-feature
tests use (:mod:`.drifttest`): the device tests them against the reference and its own
burn-in baseline, the server merges them per cohort.  The cost per window is one
``(rows, features) x (features, components)`` product.

Old agents never open this member; a package without it (built before) simply has no
multivariate check.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .drift import CompiledReference, DriftReference, FeatureReference, build_reference
from .errors import ModelError

PCA_NAME = "drift-pca.json"
"""The package member holding the :class:`PcaReference`."""
STATISTICS = ("spe", "t2")
VARIANCE_KEPT = 0.9
MAX_COMPONENTS = 32
MAX_FEATURES = 1024
"""Wider inputs get no PCA: its basis would outweigh a small model in the package, and the
fit would take the builder minutes."""
MAX_ROWS = 8000
"""At most this many reference rows (a random subset) fit and lay out the PCA."""
MIN_ROWS = 40
BINS = 20
SCALE_FLOOR = 0.1
"""A feature's scale is at least this share of the median feature's standard deviation, so
an almost-constant pixel cannot dominate the error with its rare values."""
_DECIMALS = 7

Floats = Annotated[list[float], Field(min_length=1, max_length=MAX_FEATURES)]


class PcaReference(BaseModel):
    """A PCA basis of the reference rows and the layout of its two per-row statistics."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    v: Literal[1] = 1
    samples: Annotated[int, Field(ge=1)]
    """Held-out reference rows the statistics' bins and shares come from."""
    mean: Floats
    scale: Floats
    components: Annotated[list[Floats], Field(min_length=1, max_length=MAX_COMPONENTS)]
    """Orthonormal rows, in standardised feature space, largest variance first."""
    variances: Annotated[list[float], Field(min_length=1, max_length=MAX_COMPONENTS)]
    statistics: Annotated[list[FeatureReference], Field(min_length=2, max_length=2)]
    """Bins of ``spe`` and ``t2`` (in that order) over the held-out reference rows."""
    error_mean: Annotated[float, Field(ge=0)]
    """Mean ``spe`` of the held-out rows: the scale of :attr:`MultivariateTest.error_ratio`."""

    @model_validator(mode="after")
    def _consistent(self) -> PcaReference:
        d = len(self.mean)
        if len(self.scale) != d or any(s <= 0 for s in self.scale):
            raise ValueError("scale needs one positive value per feature")
        if any(len(c) != d for c in self.components):
            raise ValueError(f"every component needs {d} values")
        if len(self.variances) != len(self.components) or any(v <= 0 for v in self.variances):
            raise ValueError("variances needs one positive value per component")
        return self

    @property
    def width(self) -> int:
        return len(self.mean)


def build_pca(x: npt.ArrayLike, *, seed: int = 0) -> PcaReference | None:
    """The PCA of a reference matrix ``(samples, features)``; None when it cannot help
    (fewer than 2 or more than :data:`MAX_FEATURES` features, or under :data:`MIN_ROWS` rows).

    Half the rows (at random, reproducibly) fit the basis, the other half lay out the
    statistics' bins, so a window from the training distribution sees the same errors
    the reference does.
    """
    data = np.asarray(x, dtype=np.float64)
    if data.ndim != 2 or not np.isfinite(data).all():
        raise ModelError("a PCA reference needs a finite (samples, features) matrix")
    n, d = data.shape
    if d < 2 or d > MAX_FEATURES or n < MIN_ROWS:
        return None
    order = np.random.default_rng(seed).permutation(n)[:MAX_ROWS]
    n = order.size
    fit, held = data[order[: n // 2]], data[order[n // 2 :]]
    mean = fit.mean(axis=0)
    std = fit.std(axis=0)
    varying = std[std > 0]
    floor = SCALE_FLOOR * float(np.median(varying)) if varying.size else 1.0
    scale = np.maximum(std, floor)
    z = (fit - mean) / scale
    _, sv, vt = np.linalg.svd(z, full_matrices=False)
    var = sv**2 / max(fit.shape[0] - 1, 1)
    if var.sum() <= 0:
        return None
    share = np.cumsum(var) / var.sum()
    k = int(np.searchsorted(share, VARIANCE_KEPT) + 1)
    k = max(1, min(k, MAX_COMPONENTS, d - 1, fit.shape[0] - 1))
    floor_var = max(float(var[0]) * 1e-9, 1e-12)
    draft = PcaReference(
        samples=held.shape[0],
        mean=_r(mean),
        scale=_r(scale),
        components=[_r(c) for c in vt[:k]],
        variances=_r(np.maximum(var[:k], floor_var)),
        statistics=[FeatureReference(edges=[], expected=[1.0])] * 2,
        error_mean=0.0,
    )
    stats = CompiledPca(draft).statistics(held)  # with the rounded basis the device uses
    layout = build_reference(stats, bins=BINS)
    return draft.model_copy(
        update={"statistics": layout.features, "error_mean": float(stats[:, 0].mean())}
    )


def _r(values: npt.NDArray[np.float64]) -> list[float]:
    return [float(v) for v in np.round(values, _DECIMALS)]


def read_pca(members: Mapping[str, bytes]) -> PcaReference | None:
    """The package's PCA reference, None if it ships none; a broken one is a
    :class:`ModelError` naming what is wrong."""
    raw = members.get(PCA_NAME)
    if raw is None:
        return None
    try:
        return PcaReference.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise ModelError(f"{PCA_NAME} in the package is not a PCA reference: {exc}") from exc


def pca_json(reference: PcaReference) -> bytes:
    return reference.model_dump_json().encode()


class CompiledPca:
    """A :class:`PcaReference` as numpy arrays, for scoring windows."""

    def __init__(self, reference: PcaReference) -> None:
        self.reference = reference
        self.components = len(reference.components)
        self._mean = np.asarray(reference.mean, dtype=np.float64)
        self._inv_scale = 1.0 / np.asarray(reference.scale, dtype=np.float64)
        self._basis = np.asarray(reference.components, dtype=np.float64).T.copy()
        self._inv_var = 1.0 / np.asarray(reference.variances, dtype=np.float64)
        self._bins = CompiledReference(
            DriftReference(samples=reference.samples, features=list(reference.statistics))
        )
        self.error_mean = reference.error_mean

    @property
    def width(self) -> int:
        return self._mean.size

    @property
    def bins(self) -> int:
        return self._bins.bins

    def statistics(self, rows: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``(rows, 2)``: each row's ``spe`` and ``t2`` (non-finite rows give NaN)."""
        data = np.asarray(rows, dtype=np.float64)
        if data.ndim == 1:
            data = data.reshape(1, -1)
        if data.ndim != 2 or data.shape[1] != self.width:
            raise ModelError(
                f"inputs have shape {data.shape}, but the PCA reference describes "
                f"{self.width} features per row"
            )
        z = (data - self._mean) * self._inv_scale
        # einsum, not a BLAS product: OpenBLAS threads woken on a busy device keep spinning
        # after the call and slow the rest of the window's work by milliseconds; this loop
        # costs well under a millisecond for the 1,024 rows a window holds.
        s = np.einsum("ij,jk->ik", z, self._basis)
        spe = np.maximum(np.einsum("ij,ij->i", z, z) - np.einsum("ij,ij->i", s, s), 0.0)
        t2 = np.einsum("ij,ij,j->i", s, s, self._inv_var)
        return np.column_stack([spe, t2])

    def histogram(self, stats: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """``(2, bins)`` counts of :meth:`statistics` output over the reference layout."""
        return self._bins.histogram(stats)

    def reference_counts(self) -> npt.NDArray[np.float64]:
        return self._bins.reference_counts()
