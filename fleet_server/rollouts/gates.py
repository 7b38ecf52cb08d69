"""Health gates: ``metric OP number`` conditions a wave must meet before the next one.

    error_rate<0.01      p95_latency_ms<40      accuracy>=0.95
    confidence_drop<0.05 drift_js<0.3           install_success_rate>=0.99
    crash_loops==0

Metrics (computed at the edge by :mod:`.metrics` over the wave's devices,
during the probation window, from telemetry of the new version only):

* ``error_rate``: inference errors / inferences;
* ``p95_latency_ms``: mean of the reported p95 latencies;
* ``accuracy``: feedback_correct / feedback_count (ground truth sent back by apps);
* ``confidence_drop``: mean top-1 confidence before the rollout minus after it;
* ``drift_js``: the largest Jensen-Shannon distance (0 = same, 1 = disjoint) that current
  agents report, against each device's own baseline (against the package reference while
  the baseline is still filling, as it is right after an install);
* ``drift_psi``: the largest PSI reported by agents from before the chi-squared tests;
* ``drift`` (deprecated): the largest of either, whatever its scale, which is what it came
  to mean once agents started reporting Jensen-Shannon distances; a gate with it still
  works and says so in its note.  Name the statistic instead;
* ``install_success_rate``: devices that committed / devices that finished;
* ``crash_loops``: devices that restarted twice or more in the window or report
  health ``failed``;
* ``shadow_agreement``: on a shadow step, the share of live inputs where the
  candidate gave the active model's answer;
* ``shadow_accuracy_delta``: on a shadow step, candidate accuracy minus active
  accuracy on the same labelled inputs (``>=-0.02``: at most 2 points worse);
* ``shadow_p95_latency_ms``: on a shadow step, the candidate's p95 latency.

The ``shadow_*`` gates are judged once, on the shadow step, before any device
switches; the others on every wave.

Evaluation is a pure function of the fetched numbers.  A gate on a traffic
metric (see :data:`EVIDENCE`) is judged only on enough evidence: with fewer
than the plan's ``min_samples`` observations from the wave it is *waiting*
(neither passed nor failed), because a canary that serves nothing, or whose
telemetry never arrives, must not sail through ``error_rate`` or
``accuracy``.  The engine decides how long to wait and turns a wait that ran
out into a failure (:func:`expire`).  A plan that allows no data (fleets
without traffic) gets the old rule back: a metric with no samples passes and
says ``no data``.  ``install_success_rate`` and ``crash_loops`` need no
traffic and are judged as they are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edgefleet_contract.errors import PlanError

from .champion import Arm, Comparison, Pairs, compare, compare_paired

METRICS = (
    "error_rate",
    "p95_latency_ms",
    "accuracy",
    "confidence_drop",
    "drift",
    "drift_js",
    "drift_psi",
    "install_success_rate",
    "crash_loops",
    "shadow_agreement",
    "shadow_accuracy_delta",
    "shadow_p95_latency_ms",
)
SHADOW_METRICS = frozenset(m for m in METRICS if m.startswith("shadow_"))
"""Judged on the shadow step (the candidate beside the active model), not on the waves."""
EVIDENCE: dict[str, str] = {
    "error_rate": "inferences",
    "p95_latency_ms": "inferences",
    "accuracy": "labelled answers",
    "confidence_drop": "inferences",
    "drift": "drift samples",
    "drift_js": "drift samples",
    "drift_psi": "drift samples",
    "shadow_agreement": "shadow answers",
    "shadow_accuracy_delta": "labelled shadow answers",
    "shadow_p95_latency_ms": "shadow answers",
}
"""Metrics that need traffic, and what one observation of each is (for the waiting text)."""
DEPRECATED: dict[str, str] = {
    "drift": (
        "'drift' is deprecated: it reads PSI from older agents and the Jensen-Shannon "
        "distance from current ones; use drift_js or drift_psi"
    ),
}
"""Gate names still accepted, and the note their results carry."""
_OPS = ("<=", ">=", "==", "!=", "<", ">")
_TOKEN = re.compile(
    r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|(<=|>=|==|!=|<|>|=)|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(\S))"
)


@dataclass(frozen=True)
class Gate:
    source: str
    metric: str
    op: str
    threshold: float

    def holds(self, value: float) -> bool:
        t = self.threshold
        return {
            "<": value < t,
            "<=": value <= t,
            ">": value > t,
            ">=": value >= t,
            "==": value == t,
            "!=": value != t,
        }[self.op]


@dataclass(frozen=True)
class GateResult:
    gate: str
    metric: str
    op: str
    threshold: float
    value: float | None
    passed: bool
    note: str = ""
    samples: int | None = None
    """Observations behind ``value`` (None: the metric needs no traffic, or was not counted)."""
    needed: int = 0
    """Observations the gate needs before it is judged (0: it is judged on whatever there is)."""
    unit: str = ""
    waiting: bool = False
    """Not judged yet: too few observations.  ``passed`` is False until it is."""
    low: float | None = None
    high: float | None = None
    """The champion/challenger gate's one-sided bounds on the accuracy difference."""
    parent_samples: int | None = None
    """The champion/challenger gate: the parent's labelled answers (None: other gates)."""


def parse_gate(text: str) -> Gate:
    """Parse ``metric OP number``; errors name the column and what was expected."""
    if len(text) > 200:
        raise PlanError("a gate is longer than 200 characters")
    tokens: list[tuple[int, str, int]] = []
    pos = 0
    while pos < len(text) and text[pos:].strip():
        m = _TOKEN.match(text, pos)
        assert m is not None  # the last alternative matches any non-space
        kind = m.lastindex or 4
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()

    def fail(i: int, expected: str) -> PlanError:
        if i < len(tokens):
            col, found = tokens[i][2], repr(tokens[i][1])
        else:
            col, found = len(text), "the end"
        return PlanError(f"gate {text!r}: expected {expected} at column {col + 1}, found {found}")

    if not tokens:
        raise PlanError("the gate is empty; write it as metric OP number, e.g. error_rate<0.01")
    if tokens[0][0] != 1 or tokens[0][1] not in METRICS:
        raise fail(0, f"a metric ({', '.join(METRICS)})")
    if len(tokens) < 2 or tokens[1][0] != 2:
        raise fail(1, f"a comparison ({' '.join(_OPS)})")
    if len(tokens) < 3 or tokens[2][0] != 3:
        raise fail(2, "a number")
    if len(tokens) > 3:
        raise fail(3, "the end")
    threshold = float(tokens[2][1])
    if not math.isfinite(threshold):
        raise fail(2, "a finite number")
    op = "==" if tokens[1][1] == "=" else tokens[1][1]
    return Gate(source=text.strip(), metric=tokens[0][1], op=op, threshold=threshold)


def evaluate(
    gates: Sequence[Gate],
    values: Mapping[str, float | None],
    samples: Mapping[str, int] | None = None,
    *,
    min_samples: int = 1,
    allow_no_data: bool = True,
) -> list[GateResult]:
    """Each gate against the measured ``values`` (``None``: no samples).

    ``samples`` counts the observations behind each traffic metric; a gate on
    one with fewer than ``min_samples`` is waiting unless ``allow_no_data``.
    Without ``samples`` every traffic metric counts as unobserved.
    """
    out = []
    out = [_judged(g, values, samples, min_samples, allow_no_data) for g in gates]
    return [
        replace(r, note=f"{r.note}; {DEPRECATED[r.metric]}" if r.note else DEPRECATED[r.metric])
        if r.metric in DEPRECATED
        else r
        for r in out
    ]


def _judged(
    g: Gate,
    values: Mapping[str, float | None],
    samples: Mapping[str, int] | None,
    min_samples: int,
    allow_no_data: bool,
) -> GateResult:
    value = values.get(g.metric)
    if value is not None and not math.isfinite(value):
        value = None
    unit = EVIDENCE.get(g.metric, "")
    n = (samples or {}).get(g.metric, 0) if unit else None
    base = (g.source, g.metric, g.op, g.threshold)
    if unit and not allow_no_data and (value is None or (n or 0) < min_samples):
        note = f"waiting for data: {n}/{min_samples} {unit}"
        return GateResult(*base, value, False, note, n, min_samples, unit, waiting=True)
    if value is None:
        return GateResult(*base, None, True, "no data", n, 0, unit)
    needed = 0 if allow_no_data else min_samples
    return GateResult(*base, value, g.holds(value), "", n, needed, unit)


def more_needed(result: Mapping[str, Any]) -> int:
    """How many more observations a waiting gate needs (the larger side of a comparison)."""
    needed = int(result["needed"])
    short = needed - int(result.get("samples") or 0)
    if result.get("parent_samples") is not None:
        short = max(short, needed - int(result["parent_samples"]))
    return max(0, short)


def shortfall(results: Iterable[Mapping[str, Any]]) -> str:
    """The waiting gates of stored results, as ``error_rate<0.01 3/20 inferences, ...``;
    a champion/challenger gate says how many more labels it needs."""
    out = []
    for r in results:
        if not r.get("waiting"):
            continue
        text = f"{r['gate']} {r.get('samples') or 0}/{r['needed']} {r['unit']}"
        if r.get("parent_samples") is not None:
            text += f" (parent {r['parent_samples']}/{r['needed']}): "
            what = "labels" if "labelled" in r["unit"] else "answers"
            text += f"needs {more_needed(r)} more {what}"
        out.append(text)
    return ", ".join(out)


def failed_text(failed: Iterable[GateResult]) -> str:
    """Failed gates as ``gate (why)``, for the reason a rollout halts."""
    return "; ".join(
        f"{r.gate} ({r.note})" if r.note else f"{r.gate} (measured {r.value:g})" for r in failed
    )


def vs_parent(
    parent_label: str,
    new: Arm,
    parent: Arm,
    *,
    margin: float,
    confidence: float,
    allow_no_data: bool = False,
    basis: str = "labels",
) -> GateResult:
    """The champion/challenger gate (see :mod:`.champion`) as a gate result.

    ``basis`` ``estimate``: the counts are label-free estimates (answers times
    the estimated accuracy), judged the same way; their interval holds the
    sampling error only, not the calibration's.  A parent with neither labels
    nor a trusted estimate in the window leaves nothing to compare with (a fleet
    that sends no feedback): the gate then passes and says so, and the plan's
    absolute gates are what guards the rollout.
    """
    source = f"accuracy vs {parent_label} >= -{margin * 100:g}pt at {confidence * 100:g}%"
    unit = EVIDENCE["accuracy"]
    if basis == "estimate":
        source += " (label-free estimate)"
        unit = "answers (estimated)"
    base = (source, "accuracy_vs_parent", ">=", -margin)
    if not parent.labels:
        note = (
            f"{parent_label} has no labelled answers and no trusted estimate in the window: "
            "nothing to compare"
        )
        return GateResult(*base, None, True, note, new.labels, 0, unit, parent_samples=0)
    c = compare(new, parent, margin=margin, confidence=confidence)
    if c.verdict == "wait" and allow_no_data and not new.labels:
        return GateResult(*base, None, True, "no data", 0, 0, unit, parent_samples=parent.labels)
    return _champion_result(base, c, unit, new.labels, parent.labels)


def vs_parent_paired(
    parent_label: str, pairs: Pairs, *, margin: float, confidence: float
) -> GateResult:
    """The champion/challenger gate on a shadow run's paired labels: both versions'
    answers to the same labelled inputs (see :func:`.champion.compare_paired`)."""
    source = (
        f"accuracy vs {parent_label} >= -{margin * 100:g}pt at {confidence * 100:g}% "
        "(paired, shadow run)"
    )
    base = (source, "accuracy_vs_parent", ">=", -margin)
    c = compare_paired(pairs, margin=margin, confidence=confidence)
    unit = EVIDENCE["shadow_accuracy_delta"]
    return _champion_result(base, c, unit, pairs.labelled, pairs.labelled)


def _champion_result(
    base: tuple[str, str, str, float], c: Comparison, unit: str, new: int, parent: int
) -> GateResult:
    note = c.reason
    if c.low is not None and c.high is not None:
        note += f" (difference {c.difference:+.3f}, bounds {c.low:+.3f}..{c.high:+.3f})"
    return GateResult(
        *base,
        c.difference,
        c.verdict == "pass",
        note,
        new,
        c.needed,
        unit,
        waiting=c.verdict == "wait",
        low=c.low,
        high=c.high,
        parent_samples=parent,
    )


def expire(results: Sequence[GateResult], within: str) -> list[GateResult]:
    """The results once the wait for data ran out: every gate still waiting fails."""
    out = []
    for r in results:
        if r.waiting:
            short = "too little data" if r.samples else "no data"
            note = f"{short}: {r.samples or 0} of {r.needed} {r.unit} from the wave within {within}"
            r = replace(r, passed=False, waiting=False, note=note)
        out.append(r)
    return out
