"""The reference data set: scikit-learn's bundled 8x8 digits, split the same way everywhere.

The held-out split is part of the product's contract with itself: the reference
models are trained on :func:`split`'s ``train`` part, and a federated candidate
is judged on its ``test`` part, so numbers from different days compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgefleet_contract.package import Preprocessing

LABELS = tuple(str(d) for d in range(10))
PREPROCESSING = Preprocessing(scale=1.0 / 16.0, offset=0.0)
"""Pixel intensities are 0..16; the models see 0..1."""
IMAGE_SHAPE = (8, 8, 1)


@dataclass(frozen=True)
class Split:
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]
    """Raw features (0..16), as a device would pass them to ``predict``."""


def split(*, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """A stratified, seeded train/test split of ``load_digits`` (no download)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.asarray(data.data, dtype=np.float32)
    y = np.asarray(data.target, dtype=np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test[members[: round(len(members) * test_fraction)]] = True
    return Split(x[~test], y[~test], x[test], y[test])
