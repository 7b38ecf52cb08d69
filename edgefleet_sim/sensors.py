"""Simulated sensors: digits readings (optionally shifted) with ground truth as feedback."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from agent.serving import ModelService
from edgefleet_common.background import BackgroundThread
from edgefleet_contract.errors import EdgefleetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shift:
    """Covariate shift applied to the raw 0..16 pixels from ``after_s`` on: a brightness
    offset (fraction of full scale), the kind of change the PSI drift check sees."""

    amount: float = 0.0
    after_s: float = 0.0

    def apply(self, rows: np.ndarray, elapsed: float) -> np.ndarray:
        if not self.amount or elapsed < self.after_s:
            return rows
        return np.clip(rows + 16.0 * self.amount, 0.0, 16.0).astype(np.float32)


class Sensors:
    """One thread feeding every device's real model service: ``rate`` readings per
    second per device, ground truth returned as feedback for ``feedback`` of them."""

    def __init__(
        self,
        services: Sequence[ModelService],
        *,
        rate: float,
        feedback: float,
        shift: Shift,
        on_error: Callable[[], None] | None = None,
        seed: int = 0,
    ) -> None:
        from fleet_server.modelkit.digits import split

        data = split()
        self._x, self._y = data.x_test, data.y_test
        self._services = list(services)
        self._rate = rate
        self._feedback = feedback
        self._shift = shift
        self._on_error = on_error
        self._rng = np.random.default_rng(seed)
        self._worker = BackgroundThread("sensors", self._run)
        self.readings = 0

    def start(self) -> None:
        if self._rate > 0 and self._services:
            self._worker.start()

    def stop(self) -> None:
        self._worker.stop(10)

    def _run(self) -> None:
        started = time.monotonic()
        period = 1.0 / self._rate
        while not self._worker.stopping.wait(period):
            elapsed = time.monotonic() - started
            picks = self._rng.integers(0, len(self._y), size=len(self._services))
            for service, i in zip(self._services, picks.tolist(), strict=True):
                if self._worker.stopping.is_set():
                    return
                self._read(service, i, elapsed)

    def _read(self, service: ModelService, i: int, elapsed: float) -> None:
        if service.model is None:
            return
        row = self._shift.apply(self._x[i : i + 1], elapsed)
        try:
            _, ids = service.predict_tracked(row)
            self.readings += 1
            if self._rng.random() < self._feedback:
                service.feedback(ids[0], int(self._y[i]))
        except EdgefleetError as exc:
            log.warning("simulated reading failed: %s", exc)
            if self._on_error is not None:
                self._on_error()
