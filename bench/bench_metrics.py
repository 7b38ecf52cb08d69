"""Cost of recording one inference on the predict path, against the cost of calling a
method that does nothing with the same arguments (measured in the same run), and the
cost of a window snapshot: percentiles, histograms, and the drift tests of 64 features
(digits' 8x8 pixels, against the package reference and the device baseline), beside the
PSI the snapshot computed before, on the same rows."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgefleet_contract.drift import CompiledReference, build_reference, quantile_reference
from edgefleet_contract.multivariate import build_pca
from tests.harness import digits_recorder

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
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(0)
    digits = load_digits().data
    reference = build_reference(digits)
    rows = digits[rng.integers(0, len(digits), 256)].astype(np.float32)
    noop = _Noop()
    plain = digits_recorder()
    drifting = digits_recorder(reference=reference, pca=build_pca(digits))

    baseline = _per_call_ns(lambda i: noop.record(0.0021, 0.93, i % 10))
    record = _per_call_ns(lambda i: plain.record(0.0021, 0.93, i % 10))
    baseline_row = _per_call_ns(lambda i: noop.record(0.0021, 0.93, i % 10, rows[i & 255]))
    with_row = _per_call_ns(lambda i: drifting.record(0.0021, 0.93, i % 10, rows[i & 255]))

    snapshots, psi_ms = [], []
    legacy = CompiledReference(quantile_reference(digits))
    for _ in range(REPEATS + 5):  # the first five windows fill the burn-in baseline
        for i in range(10_000):  # a busy 10 s window: 1,000 inferences/s
            drifting.record(0.0021, 0.93, i % 10, rows[i & 255])
        start = time.perf_counter_ns()
        window = drifting.snapshot()
        snapshots.append((time.perf_counter_ns() - start) / 1e6)
        start = time.perf_counter_ns()
        legacy.feature_psi(rows[np.arange(1024) & 255])
        psi_ms.append((time.perf_counter_ns() - start) / 1e6)
    assert window.drift is not None and window.drift.baseline is not None
    assert window.drift.multivariate is not None and window.drift.multivariate.baseline
    assert window.inference.count == 10_000
    tested = snapshots[-REPEATS:]

    def row(name: str, ns: float, base: float, note: str) -> dict[str, object]:
        return {
            "benchmark": name,
            "figure": f"{ns / 1000:.2f} µs",
            "baseline": f"{base / 1000:.2f} µs (no-op call)",
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
            "recorder cost per inference",
            with_row,
            baseline_row,
            f"record(..., row) with a {FEATURES}-feature drift reference and its PCA; row "
            "kept in a "
            f"1,024-row reservoir; best of {REPEATS} x {CALLS:,} calls",
        ),
        {
            "benchmark": "10,000-row window snapshot",
            "figure": f"{statistics.median(tested):.2f} ms",
            "baseline": f"{statistics.median(psi_ms):.2f} ms (PSI of the same 1,024 rows)",
            "ratio": f"{statistics.median(tested) / statistics.median(psi_ms):.1f}",
            "note": f"median of {REPEATS} (worst {max(tested):.2f} ms); p50/p95/p99, histograms, "
            f"chi-squared + JS of {FEATURES} features and of the PCA's reconstruction error "
            "and T^2 against reference and baseline",
        },
    ]
