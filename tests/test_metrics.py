"""The inference recorder: exact counts, bounded samples, drift only on enough evidence."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from agent.metrics import InferenceRecorder
from edgefleet_contract.drift import build_reference
from edgefleet_contract.errors import ModelError


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_window_summary_and_reset() -> None:
    clock = Clock()
    rec = InferenceRecorder("digits", "1.2.0", labels=["zero", "one"], clock=clock)
    for ms in range(1, 101):
        rec.record(ms / 1000.0, confidence=ms / 100.0, predicted=ms % 2)
    rec.record_error()
    rec.record_feedback(True)
    rec.record_feedback(False)
    clock.t += 10.0
    window = rec.snapshot()
    inf = window.inference
    assert (inf.model, inf.version, inf.count, inf.errors) == ("digits", "1.2.0", 101, 1)
    assert window.window_s == 10.0 and inf.throughput_per_s == pytest.approx(10.1)
    assert inf.latency is not None
    assert inf.latency.p50_ms == pytest.approx(50.5)
    assert inf.latency.p99_ms == pytest.approx(99.01)
    assert inf.latency.max_ms == pytest.approx(100.0)
    assert inf.latency.mean_ms == pytest.approx(50.5)
    assert inf.class_counts == {"zero": 50, "one": 50}
    assert (inf.feedback_count, inf.feedback_correct) == (2, 1)
    assert sum(inf.confidence_hist) == 100 and len(inf.confidence_hist) == 10
    assert window.drift is None  # no reference
    clock.t += 5.0
    empty = rec.snapshot().inference
    assert (empty.count, empty.errors, empty.latency, empty.class_counts) == (0, 0, None, {})
    assert empty.throughput_per_s == 0.0 and sum(empty.confidence_hist) == 0


def test_confidence_bins_and_odd_values() -> None:
    rec = InferenceRecorder("m", "1")
    for c in (0.0, 0.05, 0.1, 0.55, 0.999, 1.0, float("nan"), -1.0, 2.0, float("inf")):
        rec.record(0.001, confidence=c, predicted=7)
    hist = rec.snapshot().inference.confidence_hist
    assert hist == [4, 1, 0, 0, 0, 1, 0, 0, 0, 4]


def test_unlabelled_classes_are_named_by_index() -> None:
    rec = InferenceRecorder("m", "1", labels=["cat"])
    rec.record(0.001, confidence=0.9, predicted=0)
    rec.record(0.001, confidence=0.9, predicted=np.int64(3))
    assert rec.snapshot().inference.class_counts == {"cat": 1, "3": 1}


def test_bad_latencies_are_counted_but_not_timed() -> None:
    rec = InferenceRecorder("m", "1")
    rec.record(float("nan"), confidence=0.5, predicted=0)
    rec.record(-1.0, confidence=0.5, predicted=0)
    rec.record(float("inf"), confidence=0.5, predicted=0)
    rec.record(0.002, confidence=0.5, predicted=0)
    inf = rec.snapshot().inference
    assert inf.count == 4
    assert inf.latency is not None and inf.latency.max_ms == pytest.approx(2.0)


def test_latency_reservoir_is_bounded_but_count_mean_max_are_exact() -> None:
    rec = InferenceRecorder("m", "1", latency_capacity=256, seed=1)
    latencies = np.random.default_rng(3).uniform(0.0, 0.1, size=20_000)
    for v in latencies:
        rec.record(float(v), confidence=0.5, predicted=0)
    inf = rec.snapshot().inference
    assert inf.count == 20_000 and inf.latency is not None
    assert inf.latency.max_ms == pytest.approx(latencies.max() * 1000)
    assert inf.latency.mean_ms == pytest.approx(latencies.mean() * 1000)
    # A uniform sample of 256 puts the median within a few percent of the truth.
    assert inf.latency.p50_ms == pytest.approx(50.0, abs=10.0)


def test_drift_waits_for_enough_rows_then_scores_and_resets() -> None:
    rng = np.random.default_rng(4)
    ref = build_reference(rng.normal(size=(10_000, 3)))
    rec = InferenceRecorder("m", "1", reference=ref, min_drift_samples=300, seed=2)
    for row in rng.normal(size=(200, 3)).astype(np.float32):
        rec.record(0.001, confidence=0.9, predicted=0, row=row)
    assert rec.snapshot().drift is None  # 200 < 300: carried into the next window
    for row in rng.normal(size=(200, 3)).astype(np.float32):
        rec.record(0.001, confidence=0.9, predicted=0, row=row)
    drift = rec.snapshot().drift
    assert drift is not None and drift.samples == 400 and drift.reference.p_value > 0.01
    assert drift.baseline is None and drift.burn_in.rows == 400  # the burn-in is filling
    assert rec.snapshot().drift is None  # scored rows are consumed

    shifted = rng.normal(size=(2000, 3)).astype(np.float32)
    shifted[:, 1] += 1.5
    for row in shifted:
        rec.record(0.001, confidence=0.9, predicted=0, row=row.reshape(1, 3))
    drift = rec.snapshot().drift
    assert drift is not None
    assert drift.samples == 1024  # reservoir capacity, uniformly sampled
    assert drift.reference.p_value < 1e-6 and drift.reference.drifted == 1
    top = drift.reference.features
    assert top[0].feature == 1 and top[0].effect == drift.reference.effect > 0.3
    assert [f.p_value for f in top] == sorted(f.p_value for f in top)
    # The window's histograms travel with the report: one row per feature, all rows counted.
    assert len(drift.histograms) == 3 and all(sum(h) == 1024 for h in drift.histograms)


def test_rows_of_the_wrong_width_are_counted_not_raised() -> None:
    ref = build_reference(np.random.default_rng(5).normal(size=(100, 4)))
    rec = InferenceRecorder("m", "1", reference=ref, min_drift_samples=1)
    rec.record(0.001, confidence=0.9, predicted=0, row=np.zeros(3, np.float32))
    rec.record(0.001, confidence=0.9, predicted=0, row=np.zeros(4, np.float32))
    window = rec.snapshot()
    assert rec.rejected_rows == 1
    assert window.inference.count == 2
    assert window.drift is not None and window.drift.samples == 1


def test_concurrent_recording_loses_nothing() -> None:
    rec = InferenceRecorder("m", "1", labels=["a", "b", "c"], latency_capacity=64)
    per_thread, threads = 5000, 4

    def work(k: int) -> None:
        for i in range(per_thread):
            rec.record(0.001 * (i % 7), confidence=(i % 10) / 10 + 0.05, predicted=k % 3)
            if i % 100 == 0:
                rec.record_feedback(True)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    snapshots = [rec.snapshot() for _ in range(20)]  # snapshots racing with writers
    for t in pool:
        t.join()
    snapshots.append(rec.snapshot())
    total = sum(s.inference.count for s in snapshots)
    assert total == per_thread * threads
    assert sum(sum(s.inference.confidence_hist) for s in snapshots) == total
    assert sum(sum(s.inference.class_counts.values()) for s in snapshots) == total
    assert sum(s.inference.feedback_count for s in snapshots) == 50 * threads


def test_construction_errors_name_the_problem() -> None:
    with pytest.raises(ModelError, match="model name"):
        InferenceRecorder("", "1")
    with pytest.raises(ModelError, match="min_drift_samples"):
        InferenceRecorder("m", "1", drift_capacity=10, min_drift_samples=11)
