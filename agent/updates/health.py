"""Cumulative health counters for probation, fed by the daemon's telemetry windows.

The model service's recorder hands out per-window numbers and resets them, and
the telemetry loop owns that reset.  Rather than steal windows, the daemon
adds each window it snapshots here, and probation compares two readings of
these running totals.
"""

from __future__ import annotations

import threading

from edgefleet_contract.messages import InferenceStats

from .machine import HealthCounters


class HealthTally:
    """Running totals of inferences, inference errors and runtime crashes (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inferences = 0
        self._errors = 0
        self._crashes = 0

    def add_window(self, stats: InferenceStats) -> None:
        self.add(stats.count, stats.errors)

    def add(self, inferences: int, errors: int = 0) -> None:
        with self._lock:
            self._inferences += inferences
            self._errors += errors

    def crashed(self) -> None:
        with self._lock:
            self._crashes += 1

    def __call__(self) -> HealthCounters:
        with self._lock:
            return HealthCounters(self._inferences, self._errors, self._crashes)
