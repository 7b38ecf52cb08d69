"""The champion/challenger test: is the new version no worse than its parent by a margin?

Pure arithmetic on four counts (labelled answers and correct ones, for the
challenger and for its parent), so the engine stays I/O-free and the
benchmark runs this very code.

The question is a non-inferiority test on a difference of proportions::

    H0: acc(new) - acc(parent) <= -margin      (the new version is worse by the margin)
    H1: acc(new) - acc(parent) >  -margin

The interval is Newcombe's hybrid score interval (method 10 of Newcombe 1998),
built from the two Wilson score intervals: unlike the textbook Wald interval it
keeps its coverage at accuracies near 1 and on small counts, which is where a
canary lives.  It is one-sided at the operator's confidence (``95%``: the
lower bound is the 5% quantile).

The decision is a fixed-sample design with Haybittle-Peto early stopping:

* before either side has the labels the plan needs, the gate *waits* and says
  how many more it needs; the count is the usual non-inferiority sample size
  ``(z_a + z_b)^2 * 2pq / margin^2`` at the parent's accuracy, with the power
  equal to the confidence (so an equal model fails as rarely as a model worse
  by the margin passes);
* once both have them it is judged once: it passes when the lower bound is
  above ``-margin``, else fails;
* at every look before that, it stops early only on overwhelming evidence: the
  interval at :data:`EARLY_Z` (3.5 standard errors, one-sided p = 0.0002)
  entirely above ``-margin`` passes, entirely below fails.  A clearly better or
  clearly broken model is decided in a few dozen labels; the boundary is strict
  enough that looking every few seconds adds well under a point to either
  error rate (the benchmark measures both).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

MAX_NEEDED = 1_000_000
EARLY_Z = 3.5
"""The Haybittle-Peto boundary of the early looks."""
"""The label count asked for is capped (a margin near 0 would ask for billions)."""


@dataclass(frozen=True)
class Arm:
    """Labelled answers of one version and how many of them were right."""

    correct: int
    labels: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labels if self.labels else None


@dataclass(frozen=True)
class Comparison:
    difference: float | None
    """Challenger accuracy minus parent accuracy (None: a side has no labels)."""
    low: float | None
    high: float | None
    """The one-sided bounds at the confidence (each is the 1 - confidence quantile)."""
    needed: int
    """Labels each side needs before the test is judged."""
    verdict: str
    """``pass``, ``fail`` or ``wait``."""
    reason: str


def z_of(confidence: float) -> float:
    """The one-sided normal quantile of ``confidence`` (0.95 -> 1.645)."""
    return NormalDist().inv_cdf(confidence)


def wilson(correct: int, labels: int, z: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion, at the two-sided level of ``z``."""
    if labels <= 0:
        return 0.0, 1.0
    p = correct / labels
    z2 = z * z
    centre = (p + z2 / (2 * labels)) / (1 + z2 / labels)
    half = z * math.sqrt(p * (1 - p) / labels + z2 / (4 * labels * labels)) / (1 + z2 / labels)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(new: Arm, parent: Arm, z: float) -> tuple[float, float, float]:
    """Difference ``new - parent`` and Newcombe's hybrid score bounds around it."""
    p1, p2 = new.correct / new.labels, parent.correct / parent.labels
    l1, u1 = wilson(new.correct, new.labels, z)
    l2, u2 = wilson(parent.correct, parent.labels, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, max(-1.0, low), min(1.0, high)


def labels_needed(parent: Arm, margin: float, confidence: float) -> int:
    """Labels per side for the test to pass an equal model with probability ``confidence``.

    The parent's accuracy is shrunk towards 1/2 by two pseudo-answers each way
    (Agresti-Coull), so a parent right on all of a few labels does not make the
    count collapse to nothing.
    """
    p = (parent.correct + 2) / (parent.labels + 4)
    z = z_of(confidence)
    n = (2 * z) ** 2 * 2 * p * (1 - p) / (margin * margin)
    return min(MAX_NEEDED, max(1, math.ceil(n)))


def compare(new: Arm, parent: Arm, *, margin: float, confidence: float) -> Comparison:
    """The champion/challenger verdict on the counts so far (see the module text)."""
    z = z_of(confidence)
    needed = labels_needed(parent, margin, confidence)
    if not new.labels or not parent.labels:
        short = "the new version" if not new.labels else "the parent"
        return Comparison(None, None, None, needed, "wait", f"no labels from {short} yet")
    few = new.labels < needed or parent.labels < needed
    return _judge(lambda at: newcombe(new, parent, at), z, few, needed, margin, paired=False)


def _judge(
    bounds: Callable[[float], tuple[float, float, float]],
    z: float,
    few: bool,
    needed: int,
    margin: float,
    *,
    paired: bool,
) -> Comparison:
    """The verdict both tests share, on ``bounds(z)`` (difference, low, high): short of
    the labels needed, only a difference clear at :data:`EARLY_Z` decides early; with
    enough, the lower bound against the margin does."""
    d, low, high = bounds(z)
    points = f"{margin * 100:g} points"
    tag = " (paired)" if paired else ""
    if few:
        _, early_low, early_high = bounds(EARLY_Z)
        if early_high < -margin:
            why = f"worse than the parent by more than {points}, clearly{tag}"
            return Comparison(d, low, high, needed, "fail", why)
        if early_low > -margin:
            early = "paired, early" if paired else "early"
            why = f"no worse than the parent by {points}, clearly ({early})"
            return Comparison(d, low, high, needed, "pass", why)
        what = "labelled pairs" if paired else "labels"
        return Comparison(d, low, high, needed, "wait", f"too few {what} to tell")
    if low > -margin:
        why = f"no worse than the parent by {points}{tag}"
        return Comparison(d, low, high, needed, "pass", why)
    why = f"cannot show it is within {points} of the parent{tag}"
    return Comparison(d, low, high, needed, "fail", why)


# ------------------------------------------------------------- paired ----
#
# A shadow run labels the *same* inputs for both models: each labelled input is a pair
# (was the new version right, was the parent right).  Pairs where both agree say nothing
# about the difference; only the discordant ones do, so for two models that mostly agree
# the paired interval is far narrower than two independent ones on the same labels
# (McNemar's insight).  The interval is Bonett and Price's (2012) adjusted Wald interval
# for a difference of matched proportions: one pseudo-pair added to each discordant cell
# (and two to the total).  Agresti and Min's 1/2 per cell covered only 93% one-sided at
# 150 pairs with 4% discordance (the test measures it); this one keeps 95%.


@dataclass(frozen=True)
class Pairs:
    """Labelled inputs both versions answered: how many each got right, and on how many
    exactly one of them was right."""

    labelled: int
    new_correct: int
    parent_correct: int
    discordant: int

    @property
    def cells(self) -> tuple[int, int] | None:
        """(new right and parent wrong, parent right and new wrong); None: inconsistent."""
        gain = self.new_correct - self.parent_correct
        b2, c2 = self.discordant + gain, self.discordant - gain
        if b2 < 0 or c2 < 0 or b2 % 2 or self.discordant > self.labelled:
            return None
        return b2 // 2, c2 // 2


def paired_bounds(pairs: Pairs, z: float) -> tuple[float, float, float]:
    """Difference ``new - parent`` of the paired accuracies and its Bonett-Price bounds."""
    cells = pairs.cells
    if cells is None or pairs.labelled <= 0:
        raise ValueError("paired counts are inconsistent")
    b, c = cells
    n = pairs.labelled + 2
    pb, pc = (b + 1) / n, (c + 1) / n
    centre = pb - pc
    se = math.sqrt(max(pb + pc - centre * centre, 0.0) / n)
    d = (b - c) / pairs.labelled
    return d, max(-1.0, centre - z * se), min(1.0, centre + z * se)


def paired_needed(pairs: Pairs, margin: float, confidence: float) -> int:
    """Labelled pairs for the paired test to pass an equal model with probability
    ``confidence``: ``(2z)^2 * q / margin^2`` with ``q`` the share of discordant pairs,
    shrunk by one pseudo-pair each way so a run without any disagreement yet still asks
    for some labels."""
    q = (pairs.discordant + 1) / (pairs.labelled + 2)
    z = z_of(confidence)
    n = (2 * z) ** 2 * q / (margin * margin)
    return min(MAX_NEEDED, max(1, math.ceil(n)))


def compare_paired(pairs: Pairs, *, margin: float, confidence: float) -> Comparison:
    """The champion/challenger verdict on paired labels (same rules as :func:`compare`)."""
    needed = paired_needed(pairs, margin, confidence)
    if pairs.labelled <= 0:
        return Comparison(None, None, None, needed, "wait", "no labelled shadow answers yet")
    if pairs.cells is None:
        return Comparison(None, None, None, needed, "wait", "inconsistent paired counts")
    few = pairs.labelled < needed
    return _judge(
        lambda at: paired_bounds(pairs, at), z_of(confidence), few, needed, margin, paired=True
    )
