"""Cost of recording one inference on the predict path, against the cost of calling a
method that does nothing with the same arguments (measured in the same run), and the
cost of a window snapshot (percentiles, histograms, PSI over 64 features)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.metrics import InferenceRecorder
from edgefleet_contract.drift import build_reference

from ._lab import table

CALLS = 100_000
REPEATS = 5
FEATURES = 64  # the digits reference model: 8x8 pixels


class _Noop:
    def record(self, latency_s: float, confidence: float, predicted: int, row: Any = None) -> None:
        pass


def _per_call_ns(call: Callable[[int], None]) -> float:
    """Best-of-REPEATS mean cost of ``call`` over CALLS iterations (loop overhead included)."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        for i in range(CALLS):
            call(i)
        best = min(best, (time.perf_counter_ns() - start) / CALLS)
    return best


def run() -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    reference = build_reference(rng.normal(size=(5000, FEATURES)))
    rows = rng.normal(size=(256, FEATURES)).astype(np.float32)
    noop = _Noop()
    plain = InferenceRecorder("digits", "1.0.0", labels=[str(i) for i in range(10)])
    drifting = InferenceRecorder(
        "digits", "1.0.0", labels=[str(i) for i in range(10)], reference=reference
    )

    baseline = _per_call_ns(lambda i: noop.record(0.0021, 0.93, i % 10))
    record = _per_call_ns(lambda i: plain.record(0.0021, 0.93, i % 10))
    baseline_row = _per_call_ns(lambda i: noop.record(0.0021, 0.93, i % 10, rows[i & 255]))
    with_row = _per_call_ns(lambda i: drifting.record(0.0021, 0.93, i % 10, rows[i & 255]))

    snapshots = []
    for _ in range(REPEATS):
        for i in range(10_000):  # a busy 10 s window: 1,000 inferences/s
            drifting.record(0.0021, 0.93, i % 10, rows[i & 255])
        start = time.perf_counter_ns()
        window = drifting.snapshot()
        snapshots.append((time.perf_counter_ns() - start) / 1e6)
    assert window.drift is not None and window.inference.count == 10_000

    def row(name: str, ns: float, base: float, note: str) -> dict[str, object]:
        return {
            "benchmark": name,
            "µs per call": f"{ns / 1000:.2f}",
            "baseline µs (no-op call)": f"{base / 1000:.2f}",
            "ratio": f"{ns / base:.1f}",
            "note": note,
        }

    return [
        row(
            "record(latency, confidence, class)",
            record,
            baseline,
            f"best of {REPEATS} x {CALLS:,} calls; baseline: the same call to a no-op method",
        ),
        row(
            f"record(..., row) with a {FEATURES}-feature drift reference",
            with_row,
            baseline_row,
            "row kept in a 1,024-row reservoir",
        ),
        {
            "benchmark": "snapshot() of a 10,000-inference window",
            "µs per call": f"{statistics.median(snapshots) * 1000:.0f}",
            "baseline µs (no-op call)": "-",
            "ratio": "-",
            "note": f"median of {REPEATS}; p50/p95/p99, histograms, PSI of {FEATURES} features",
        },
    ]


if __name__ == "__main__":
    print(table(run()))
