"""Gate figures from telemetry batches (the pure part; the store fetch is in the driver tests)."""

from __future__ import annotations

import pytest

from edgefleet_contract.messages import DriftStats, InferenceStats, LatencySummary, Telemetry
from fleet_server.cbpe import Calibration
from fleet_server.rollouts.metrics import figures, label_free

from .rollout_sim import ARTIFACT


def batch(
    device: str,
    boot: str,
    n: int,
    *,
    version: str = "1.3.0",
    errors: int = 0,
    hist: list[int] | None = None,
    p95: float = 5.0,
    feedback: tuple[int, int] = (0, 0),
    drift: float | None = None,
) -> Telemetry:
    return Telemetry(
        device_id=device,
        batch_id=f"{boot}-{n}",
        seq=n,
        ts=1000.0 + n,
        window_s=10,
        inference=InferenceStats(
            model="digits",
            version=version,
            count=100,
            errors=errors,
            throughput_per_s=10,
            latency=LatencySummary(p50_ms=1, p95_ms=p95, p99_ms=9, max_ms=9, mean_ms=2),
            confidence_hist=hist or [],
            feedback_count=feedback[0],
            feedback_correct=feedback[1],
        ),
        drift=DriftStats(samples=100, score=drift) if drift is not None else None,
    )


def test_only_the_new_version_counts() -> None:
    after = {
        "a": [batch("a", "b1", 1, errors=10), batch("a", "b1", 2, version="1.2.0", errors=90)],
        "b": [batch("b", "b1", 1, errors=0, p95=15.0)],
    }
    f = figures(after, {}, {}, ARTIFACT)
    assert f["error_rate"] == pytest.approx(10 / 200)
    assert f["p95_latency_ms"] == pytest.approx(10.0)
    assert f["accuracy"] is None and f["drift"] is None and f["confidence_drop"] is None
    assert f["crash_loops"] == 0.0


def test_accuracy_confidence_drop_drift_and_crash_loops() -> None:
    # Before: all confidence in the top bin (0.95); after: all in the middle (0.55 of 5 bins).
    before = {"a": [batch("a", "b0", 1, version="1.2.0", hist=[0, 0, 0, 0, 10])]}
    after = {
        "a": [
            batch("a", "b1", 1, hist=[0, 0, 10, 0, 0], feedback=(20, 18), drift=0.1),
            batch("a", "b2", 2, drift=0.3),
            batch("a", "b3", 3),
        ],
        "b": [batch("b", "b1", 1, feedback=(20, 20))],
    }
    f = figures(after, before, {"a": "ok", "b": "ok", "c": "failed"}, ARTIFACT)
    assert f["accuracy"] == pytest.approx(38 / 40)
    assert f["confidence_drop"] == pytest.approx(0.9 - 0.5)
    assert f["drift"] == pytest.approx(0.3)
    assert f["crash_loops"] == 2.0  # "a" booted three times, "c" reports health failed


def test_label_free_estimates_use_the_calibration_and_respect_its_trust() -> None:
    cal = Calibration(counts=(0,) * 8 + (100, 900), correct=(0,) * 8 + (60, 810))

    def batch(version: str, drift: float | None = None) -> Telemetry:
        inf = InferenceStats(
            model="digits",
            version=version,
            count=200,
            errors=0,
            throughput_per_s=1,
            confidence_hist=[0] * 8 + [100, 100],
        )
        ds = DriftStats(samples=100, score=drift) if drift is not None else None
        return Telemetry(
            device_id="d", batch_id=f"b-{version}", seq=1, ts=0, window_s=1, inference=inf, drift=ds
        )

    rows = {"d": [batch("1.0.0"), batch("2.0.0")]}
    assert label_free(rows, "digits@1.0.0", cal) == (pytest.approx(0.75), 200)
    assert label_free(rows, "digits@1.0.0", None) == (None, 0)
    drifted = {"d": [batch("1.0.0", drift=3.0)]}
    assert label_free(drifted, "digits@1.0.0", cal) == (None, 200)  # not trusted
