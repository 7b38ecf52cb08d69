"""Telemetry retention: old raw batches, then old rollups, removed every ten minutes.

A singleton (lease ``retention``): with several replicas one pass at a time is
enough, and two would only contend for the same rows.
"""

from __future__ import annotations

import logging
import time

from edgefleet_common.background import IntervalThread

from .config import TelemetrySettings
from .store.base import Store

log = logging.getLogger(__name__)


class RetentionTimer:
    def __init__(self, store: Store, telemetry: TelemetrySettings) -> None:
        self.store = store
        self.telemetry = telemetry
        self.interval_s = 600.0
        """How often the pass runs (read before each wait)."""
        self._thread = IntervalThread(
            "retention",
            self._pass,
            interval_s=lambda: self.interval_s,
            log=log,
            failure="retention pass failed; will retry",
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop(30)

    def run_once(self) -> int:
        t = self.telemetry
        removed = self.store.prune(
            time.time(), raw_retention_s=t.raw_retention_s, rollup_retention_s=t.rollup_retention_s
        )
        if removed:
            log.info("retention: removed %d old telemetry rows", removed)
        return removed

    def _pass(self) -> None:
        self.run_once()
