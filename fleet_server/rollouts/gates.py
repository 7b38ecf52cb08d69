"""Health gates: ``metric OP number`` conditions a wave must meet before the next one.

    error_rate<0.01      p95_latency_ms<40      accuracy>=0.95
    confidence_drop<0.05 drift<0.25             install_success_rate>=0.99
    crash_loops==0

Metrics (computed at the edge by :mod:`.metrics` over the wave's devices,
during the probation window, from telemetry of the new version only):

* ``error_rate``: inference errors / inferences;
* ``p95_latency_ms``: mean of the reported p95 latencies;
* ``accuracy``: feedback_correct / feedback_count (ground truth sent back by apps);
* ``confidence_drop``: mean top-1 confidence before the rollout minus after it;
* ``drift``: the largest PSI drift score reported;
* ``install_success_rate``: devices that committed / devices that finished;
* ``crash_loops``: devices that restarted twice or more in the window or report
  health ``failed``.

Evaluation is a pure function of the fetched numbers.  A metric with no
samples (an idle device has no error rate; no app sends feedback) does not
block the gate, and the result says ``no data`` so an operator sees it;
``install_success_rate`` and ``crash_loops`` always have data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgefleet_contract.errors import PlanError

METRICS = (
    "error_rate",
    "p95_latency_ms",
    "accuracy",
    "confidence_drop",
    "drift",
    "install_success_rate",
    "crash_loops",
)
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


def evaluate(gates: Sequence[Gate], values: Mapping[str, float | None]) -> list[GateResult]:
    """Each gate against the measured ``values`` (``None``: no samples)."""
    out = []
    for g in gates:
        value = values.get(g.metric)
        if value is None or not math.isfinite(value):
            out.append(GateResult(g.source, g.metric, g.op, g.threshold, None, True, "no data"))
        else:
            ok = g.holds(value)
            out.append(GateResult(g.source, g.metric, g.op, g.threshold, value, ok))
    return out
