"""How a model is scored on labelled rows, the same on the device and on the server.

A device's federated evaluation and the server's held-out check report the same
two figures, so they compare only if both compute them one way.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

EPS = 1e-12
"""The smallest probability the log is taken of (a confident wrong answer costs ~27.6)."""


def cross_entropy(probs: npt.NDArray[np.floating], labels: npt.NDArray[np.int64]) -> float:
    """Mean negative log-probability of the true class (rows of ``probs`` sum to one)."""
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], EPS, None)).mean())


def accuracy(probs: npt.NDArray[np.floating], labels: npt.NDArray[np.int64]) -> float:
    """Share of rows whose most probable class is the label."""
    return float((probs.argmax(axis=1) == labels).mean())


def loss_and_accuracy(
    probs: npt.NDArray[np.floating], labels: npt.NDArray[np.int64]
) -> tuple[float, float]:
    """(cross-entropy, top-1 accuracy) of class probabilities against the labels."""
    return cross_entropy(probs, labels), accuracy(probs, labels)
