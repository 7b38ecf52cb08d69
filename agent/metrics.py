"""What the model did in one telemetry window, recorded from the predict path.

The local API calls :meth:`InferenceRecorder.record` once per inference from
several HTTP threads, so recording must cost microseconds: it only bumps a few
counters and writes into preallocated numpy buffers under one lock.  All the
arithmetic (percentiles, histograms, PSI) happens in :meth:`snapshot`, once per
window, vectorised, outside the lock.

Two bounded samples keep memory flat whatever the traffic:

* latencies: a uniform reservoir of the window (exact count, mean and max are
  kept beside it, so only the percentiles are estimated);
* input rows for drift: a uniform reservoir that is tested (:mod:`.drift_monitor`),
  and emptied, once it holds ``min_drift_samples`` rows and ``drift_interval_s``
  passed since the last test.  A quiet device waits for enough evidence instead
  of reporting the noise of five samples as a shift.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from edgefleet_contract.drift import DriftReference
from edgefleet_contract.errors import ModelError
from edgefleet_contract.messages import (
    DriftReport,
    InferenceStats,
    LatencySummary,
)
from edgefleet_contract.multivariate import PcaReference

from .drift_monitor import AlertPolicy, DriftMonitor

CONFIDENCE_BINS = 10
MAX_CLASSES = 1000
"""``InferenceStats.class_counts`` holds at most this many labels (the most frequent)."""
Row = npt.NDArray[np.floating[Any]] | None
"""One input row for the drift reservoir, ``(features,)`` or ``(1, features)``."""
_MAX_LATENCY_S = 1e6
"""Latencies outside [0, this) are clock glitches: counted as inferences, not timed."""


@dataclass(frozen=True)
class WindowStats:
    """One window's snapshot; ``drift`` is None until enough rows were seen."""

    inference: InferenceStats
    drift: DriftReport | None
    window_s: float


class InferenceRecorder:
    """Per-model recorder; make a new one when the active model changes."""

    def __init__(
        self,
        model: str,
        version: str,
        *,
        labels: Sequence[str] = (),
        reference: DriftReference | None = None,
        latency_capacity: int = 4096,
        drift_capacity: int = 1024,
        min_drift_samples: int = 200,
        drift_interval_s: float = 0.0,
        drift_policy: AlertPolicy | None = None,
        baseline_file: Path | None = None,
        top_features: int = 10,
        pca: PcaReference | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        if latency_capacity < 1 or drift_capacity < 1:
            raise ModelError("recorder capacities must be at least 1")
        if not 1 <= min_drift_samples <= drift_capacity:
            raise ModelError(
                f"min_drift_samples must be between 1 and drift_capacity ({drift_capacity})"
            )
        if not 0 <= top_features <= 4096:
            raise ModelError("top_features must be between 0 and 4096")
        try:
            InferenceStats(model=model, version=version, count=0, errors=0, throughput_per_s=0)
        except ValidationError as exc:
            raise ModelError(f"model name/version unusable in telemetry: {exc}") from exc
        self.model = model
        self.version = version
        self._labels = [(label[:128] or str(i)) for i, label in enumerate(labels)]
        self._monitor = (
            DriftMonitor(
                reference,
                policy=drift_policy,
                baseline_file=baseline_file,
                install=f"{model}@{version}",
                top_features=top_features,
                pca=pca,
            )
            if reference is not None
            else None
        )
        self._drift_interval = drift_interval_s
        self._drift_at = clock()
        self._clock = clock
        self._random = random.Random(seed).random
        self._min_drift = min_drift_samples
        self._lock = threading.Lock()
        # Latencies go in a plain list: storing a reference to the caller's float is
        # several times cheaper than a numpy item assignment.
        self._lat_cap = latency_capacity
        self._lat: list[float] = [0.0] * latency_capacity
        self._width = self._monitor.reference.width if self._monitor is not None else 0
        self._rows_cap = drift_capacity if self._width else 0
        self._rows = np.zeros((self._rows_cap, self._width), dtype=np.float32)
        self._rows_seen = 0
        self.rejected_rows = 0
        """Input rows that did not match the reference width (not scored); never reset."""
        self._reset_window(clock())

    def _reset_window(self, now: float) -> None:
        self._start = now
        self._count = 0
        self._errors = 0
        self._timed = 0
        self._lat_sum = 0.0
        self._lat_max = 0.0
        self._conf = [0] * CONFIDENCE_BINS
        self._classes: dict[int | np.integer[Any], int] = {}
        self._feedback = 0
        self._correct = 0

    # --------------------------------------------------------- hot path --

    def record(
        self,
        latency_s: float,
        confidence: float | np.floating[Any] | None,
        predicted: int | np.integer[Any] | None,
        row: Row | Callable[[], Row] = None,
    ) -> None:
        """One successful inference: its latency, top-1 confidence and class, and its input
        row, shaped ``(features,)`` or ``(1, features)``.  A model without classes
        (regression, anomaly, detection) passes ``None`` for both: latency and drift only.

        ``row`` may be a function that computes the row: it is called (under the lock)
        only when the drift reservoir keeps this call, so the drift features of the calls
        it skips once full are never computed."""
        if confidence is None:
            conf_bin = -1
        elif confidence >= 1.0:
            conf_bin = CONFIDENCE_BINS - 1
        elif confidence > 0.0:
            conf_bin = int(confidence * CONFIDENCE_BINS)
        else:  # also NaN
            conf_bin = 0
        with self._lock:
            self._count += 1
            if 0.0 <= latency_s < _MAX_LATENCY_S:
                n = self._timed
                self._timed = n + 1
                self._lat_sum += latency_s
                if latency_s > self._lat_max:
                    self._lat_max = latency_s
                if n < self._lat_cap:
                    self._lat[n] = latency_s
                else:
                    slot = int(self._random() * (n + 1))
                    if slot < self._lat_cap:
                        self._lat[slot] = latency_s
            if predicted is not None and conf_bin >= 0:
                self._conf[conf_bin] += 1
                classes = self._classes
                classes[predicted] = classes.get(predicted, 0) + 1
            if row is not None and self._width:
                n = self._rows_seen
                slot = n if n < self._rows_cap else int(self._random() * (n + 1))
                if slot < self._rows_cap:
                    if callable(row):
                        row = row()
                        if row is None:
                            return
                    try:
                        self._rows[slot] = row
                    except ValueError:
                        self.rejected_rows += 1
                        return
                self._rows_seen = n + 1

    def record_error(self) -> None:
        """An inference that failed (bad input, runtime error): counted, not timed."""
        with self._lock:
            self._count += 1
            self._errors += 1

    def record_feedback(self, correct: bool) -> None:
        """Ground truth arrived for an earlier prediction; ``correct`` if it matched."""
        with self._lock:
            self._feedback += 1
            self._correct += bool(correct)

    # --------------------------------------------------------- snapshot --

    def snapshot(self) -> WindowStats:
        """The window since the last snapshot, and start a new one."""
        now = self._clock()
        with self._lock:
            window_s = max(0.0, now - self._start)
            count, errors, timed = self._count, self._errors, self._timed
            lat_sum, lat_max = self._lat_sum, self._lat_max
            latencies = np.array(self._lat[: min(timed, self._lat_cap)], dtype=np.float64)
            conf, classes = self._conf, self._classes
            feedback, correct = self._feedback, self._correct
            rows = None
            if self._rows_seen >= self._min_drift and now - self._drift_at >= self._drift_interval:
                rows = self._rows[: min(self._rows_seen, self._rows_cap)].copy()
                self._rows_seen = 0
                self._drift_at = now
            self._reset_window(now)
        inference = InferenceStats(
            model=self.model,
            version=self.version,
            count=count,
            errors=errors,
            throughput_per_s=count / window_s if window_s > 0 else 0.0,
            latency=_latency(latencies, lat_sum / timed, lat_max) if timed else None,
            confidence_hist=conf,
            class_counts=self._named(classes),
            feedback_count=feedback,
            feedback_correct=correct,
        )
        return WindowStats(inference, self._drift(rows), window_s)

    def _named(self, classes: dict[int | np.integer[Any], int]) -> dict[str, int]:
        top = sorted(classes.items(), key=lambda kv: kv[1], reverse=True)[:MAX_CLASSES]
        named: dict[str, int] = {}
        for key, n in top:
            index = int(key)
            name = self._labels[index] if 0 <= index < len(self._labels) else str(index)[:128]
            named[name] = named.get(name, 0) + n
        return named

    def _drift(self, rows: npt.NDArray[np.float32] | None) -> DriftReport | None:
        if rows is None or self._monitor is None:
            return None
        return self._monitor.window(rows)

    @property
    def drift_monitor(self) -> DriftMonitor | None:
        return self._monitor


def _latency(latencies_s: npt.NDArray[np.float64], mean_s: float, max_s: float) -> LatencySummary:
    p50, p95, p99 = np.percentile(latencies_s, [50.0, 95.0, 99.0]) * 1000.0
    return LatencySummary(
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        max_ms=max_s * 1000.0,
        mean_ms=mean_s * 1000.0,
    )
