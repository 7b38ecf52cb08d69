"""The Dirichlet label split the demo, tests and benchmarks cut the digits set with."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet_contract.errors import ModelError
from fleet_server.modelkit.digits import split
from fleet_server.modelkit.partition import dirichlet_parts


@pytest.mark.parametrize("seed", range(5))
def test_small_alpha_leaves_devices_without_most_classes(seed: int) -> None:
    y = split().y_train
    parts = dirichlet_parts(y, 10, 0.1, seed)
    classes = [len(np.unique(y[p])) for p in parts]
    # Flooring the cut points gave the last device a sample of 9-10 classes in every seed.
    assert classes[-1] < 9, classes
    assert sum(c <= 4 for c in classes) >= 3, classes
    joined = np.concatenate(parts)
    assert len(joined) == len(y) and len(np.unique(joined)) == len(y)
    assert min(len(p) for p in parts) >= 10


def test_large_alpha_is_close_to_even() -> None:
    y = split().y_train
    parts = dirichlet_parts(y, 5, 1000.0, 1)
    assert all(len(np.unique(y[p])) == 10 for p in parts)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) < 0.1 * len(y) / 5, sizes


def test_impossible_minimum_is_named() -> None:
    y = np.zeros(20, dtype=np.int64)
    with pytest.raises(ModelError, match="min_size"):
        dirichlet_parts(y, 5, 0.1, 0, min_size=10)
