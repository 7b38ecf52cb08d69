"""Label-free accuracy: confidence-based performance estimation (CBPE) from the fleet's
confidence histograms and the package's calibration.

A device reports, per window, how many answers fell in each of ten top-1
confidence bins (``InferenceStats.confidence_hist``).  The package's
calibration (:class:`Calibration`, measured by the builder on a labelled
reference set the model never trained on) says how often the model was right
in each bin.  The expected accuracy is then the bin-weighted mean of those
rates, and its sampling spread that of a sum of Bernoulli trials.

This is NannyML's CBPE reduced to what a ten-bin histogram allows; NannyML
itself needs every prediction's score, which the devices do not send, and
would pull pandas and more onto the server for a weighted mean.

CBPE assumes the model's calibration still holds on the new inputs: it cannot
see a concept shift (same inputs, new labels), and on inputs far from the
reference a model can be confidently wrong.  So an estimate says when it is
not to be trusted: too few answers, answers in confidence bins the reference
barely visited, or input drift above the alert line in the same window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

CALIBRATION_NAME = "calibration.json"
"""The package member holding a :class:`Calibration` (written by the model builder)."""
BINS = 10
"""The agent's confidence histogram (agent.metrics.CONFIDENCE_BINS)."""
MIN_ANSWERS = 100
MIN_BIN = 10
"""Reference answers a bin needs for its own accuracy to be used (else it is pooled)."""
MAX_THIN_MASS = 0.1
DRIFT_LINE = 0.25
"""Reference drift (PSI, or Jensen-Shannon distance) above which inputs count as shifted."""


def reference_drift(drift: Any) -> float | None:
    """How far a window's inputs are from the package reference (what the calibration was
    measured on): the reference test's Jensen-Shannon effect from current agents, the PSI
    score from older ones; None without a drift report."""
    if drift is None:
        return None
    reference = getattr(drift, "reference", None)
    return float(reference.effect) if reference is not None else float(drift.score)


@dataclass(frozen=True)
class Calibration:
    """Per confidence bin: reference answers and how many were right."""

    counts: tuple[int, ...]
    correct: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "bins": len(self.counts),
            "counts": list(self.counts),
            "correct": list(self.correct),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        counts, correct = (
            tuple(int(c) for c in data["counts"]),
            tuple(int(c) for c in data["correct"]),
        )
        if (
            len(counts) != len(correct)
            or not counts
            or any(not 0 <= k <= n for k, n in zip(correct, counts, strict=True))
        ):
            raise ValueError("a calibration needs as many correct counts as bin counts, each <= it")
        return cls(counts, correct)

    def rates(self) -> list[float]:
        """Accuracy per bin; bins with fewer than :data:`MIN_BIN` reference answers are
        pooled with their neighbours upwards until the group has enough (a reference
        without enough answers at all: each bin's mid-point)."""
        groups: list[list[int]] = []
        n = 0
        for i, c in enumerate(self.counts):
            if not groups or n >= MIN_BIN:
                groups.append([])
                n = 0
            groups[-1].append(i)
            n += c
        if len(groups) > 1 and n < MIN_BIN:  # a thin top: join the group below it
            groups[-2] += groups.pop()
        out = [(i + 0.5) / len(self.counts) for i in range(len(self.counts))]
        for g in groups:
            total = sum(self.counts[i] for i in g)
            if total >= MIN_BIN:
                rate = sum(self.correct[i] for i in g) / total
                out = [rate if i in g else r for i, r in enumerate(out)]
        return out


def confidence_bins(top1: npt.ArrayLike, bins: int = BINS) -> npt.NDArray[np.int64]:
    """Bin index of each top-1 confidence, as the agent bins it (1.0 in the last bin)."""
    c = np.asarray(top1, dtype=np.float64)
    return np.minimum((c * bins).astype(np.int64), bins - 1)


def calibrate(top1: npt.ArrayLike, right: npt.ArrayLike, bins: int = BINS) -> Calibration:
    """The calibration of a model from its top-1 confidences and whether each was right."""
    idx = confidence_bins(top1, bins)
    ok = np.asarray(right, dtype=bool)
    counts = np.bincount(idx, minlength=bins)
    correct = np.bincount(idx, weights=ok.astype(np.float64), minlength=bins)
    return Calibration(tuple(int(c) for c in counts), tuple(int(c) for c in correct))


@dataclass(frozen=True)
class Estimate:
    accuracy: float | None
    low: float | None
    high: float | None
    """A 95% interval from sampling alone (calibration error is not in it)."""
    answers: int
    trusted: bool
    reasons: tuple[str, ...]
    """Why it is not to be trusted (empty when it is)."""


def estimate(
    hist: Sequence[int], calibration: Calibration, *, drift: float | None = None
) -> Estimate:
    """Expected accuracy of answers binned as ``hist`` (see the module text)."""
    n = sum(hist)
    if len(hist) != len(calibration.counts):
        why = f"{len(hist)} confidence bins against a calibration of {len(calibration.counts)}"
        return Estimate(None, None, None, n, False, (why,))
    if n == 0:
        return Estimate(None, None, None, 0, False, ("no answers",))
    rates = calibration.rates()
    acc = sum(h * r for h, r in zip(hist, rates, strict=True)) / n
    var = sum(h * r * (1 - r) for h, r in zip(hist, rates, strict=True)) / (n * n)
    half = 1.96 * math.sqrt(var)
    reasons = []
    if n < MIN_ANSWERS:
        reasons.append(f"only {n} answers (needs {MIN_ANSWERS})")
    thin = sum(h for h, c in zip(hist, calibration.counts, strict=True) if c == 0) / n
    if thin > MAX_THIN_MASS:
        reasons.append(f"{thin:.0%} of answers in confidence bins the reference never visited")
    if drift is not None and drift > DRIFT_LINE:
        reasons.append(f"inputs drifted from the reference (drift {drift:.2f} > {DRIFT_LINE})")
    return Estimate(acc, max(0.0, acc - half), min(1.0, acc + half), n, not reasons, tuple(reasons))
