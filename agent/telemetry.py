"""Assembling one :class:`Telemetry` batch per interval.

The builder owns only identity and sequencing; the numbers come from the
recorder, the system probe, the spool, the link and the sample store, which
the daemon samples and passes in.  That keeps it free of I/O and easy to test.

Batch ids must be unique per device for ever, because the server stores each
``(device_id, batch_id)`` once and silently ignores repeats.  A counter alone
restarts at 1 after a reboot, and a boot timestamp repeats on boards without a
real-time clock (they boot in 1970 until NTP answers), so the id is a random
64-bit boot id plus the sequence number within that boot.  ``seq`` is
monotonic within a boot id; across boots, order by ``ts``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence

from edgefleet_contract.errors import ConfigError
from edgefleet_contract.ids import is_device_id
from edgefleet_contract.messages import (
    LearningStats,
    LinkStats,
    Reading,
    ShadowStats,
    SpoolStats,
    SystemStats,
    Telemetry,
)

from .metrics import WindowStats

MAX_WINDOW_S = 86400.0


class TelemetryBuilder:
    def __init__(
        self,
        device_id: str,
        *,
        boot_id: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not is_device_id(device_id):
            raise ConfigError(
                f"invalid device id {device_id!r}: use 1-64 characters from A-Z, a-z, 0-9, _ and -"
            )
        self.device_id = device_id
        self.boot_id = boot_id if boot_id is not None else secrets.token_hex(8)
        if not self.boot_id.isalnum() or not 1 <= len(self.boot_id) <= 64:
            raise ConfigError(f"boot id {self.boot_id!r} must be 1-64 letters or digits")
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._seq = 0
        self._window_start = monotonic()

    @property
    def seq(self) -> int:
        """The sequence number of the last batch built (0 before the first)."""
        return self._seq

    def build(
        self,
        *,
        window: WindowStats | None = None,
        system: SystemStats | None = None,
        spool: SpoolStats | None = None,
        link: LinkStats | None = None,
        learning: LearningStats | None = None,
        shadow: ShadowStats | None = None,
        readings: Sequence[Reading] = (),
    ) -> Telemetry:
        """The next batch; its window runs from the previous build (or construction) to now."""
        with self._lock:
            now = self._monotonic()
            window_s = min(MAX_WINDOW_S, max(0.0, now - self._window_start))
            self._window_start = now
            self._seq += 1
            seq = self._seq
        return Telemetry(
            device_id=self.device_id,
            batch_id=f"{self.boot_id}-{seq}",
            seq=seq,
            ts=self._clock(),
            window_s=window_s,
            system=system,
            inference=window.inference if window is not None else None,
            drift=window.drift if window is not None else None,
            learning=learning,
            shadow=shadow,
            link=link if link is not None else LinkStats(),
            spool=spool if spool is not None else SpoolStats(),
            readings=list(readings),
        )
