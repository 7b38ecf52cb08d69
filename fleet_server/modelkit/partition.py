"""Non-IID label splits of a data set over simulated devices (demo, tests, benchmarks).

Each class is spread over the devices by a Dirichlet(alpha) draw: small alpha
gives each device a few classes, large alpha approaches an even split.  Cut
points are rounded to the nearest sample, not down: flooring them handed the
last device the fractional remainder of every class, so it always held a
sample of almost every class and the split was less non-IID than alpha says.
As in Flower Datasets' ``DirichletPartitioner``, a draw that leaves a device
with fewer than ``min_size`` samples is redrawn (a device with nothing to
train on is a different experiment).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edgefleet_contract.errors import ModelError

Indices = npt.NDArray[np.int64]


def dirichlet_parts(
    y: npt.NDArray[np.int64],
    clients: int,
    alpha: float,
    seed: int,
    *,
    min_size: int = 10,
    max_draws: int = 100,
) -> list[Indices]:
    """Row indices of ``y`` for each of ``clients`` devices (sorted, disjoint, covering all)."""
    if clients < 1 or alpha <= 0:
        raise ModelError(
            f"a Dirichlet split needs clients >= 1 and alpha > 0 (got {clients}, {alpha})"
        )
    rng = np.random.default_rng(seed)
    labels = np.unique(y)
    for _ in range(max_draws):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for label in labels:
            idx = rng.permutation(np.flatnonzero(y == label))
            shares = rng.dirichlet([alpha] * clients)
            cuts = np.rint(np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.asarray(sorted(p), dtype=np.int64) for p in parts]
    raise ModelError(
        f"no Dirichlet({alpha}) split of {len(y)} rows over {clients} devices gave every device "
        f"{min_size} samples in {max_draws} draws; use fewer devices or a smaller min_size"
    )
