"""Per-device ingest quotas: how many telemetry batches, and how many bytes, a device may send.

A device's certificate lets it publish only on its own topics, but nothing
there bounds how much: one device could store thousands of batches a second
and grow the database by megabytes a second, kept for the raw retention.  Each
device gets two token buckets (batches and bytes, each a sustained rate plus a
burst for a backlog draining after an outage); a batch over either is refused
with the reason ``quota``, counted, and not stored.  The defaults sit above what
an agent sends with its own drain policy, so a well-behaved device never meets them.

Pure logic with an injected clock; at most ``max_devices`` buckets are kept
(the least recently used go first), so a flood of ids cannot grow memory.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    per_s: float
    burst: float


@dataclass
class _Buckets:
    batches: float
    bytes: float
    at: float


class DeviceQuota:
    def __init__(
        self,
        batches: Rate,
        size: Rate,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_devices: int = 100_000,
    ) -> None:
        self.batches = batches
        self.size = size
        self._clock = clock
        self._max = max_devices
        self._buckets: OrderedDict[str, _Buckets] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, device_id: str, nbytes: int) -> str | None:
        """None when the batch fits the device's quota (and is charged), else why not."""
        now = self._clock()
        with self._lock:
            b = self._buckets.pop(device_id, None)
            if b is None:
                b = _Buckets(self.batches.burst, self.size.burst, now)
            elapsed = max(0.0, now - b.at)
            b.batches = min(self.batches.burst, b.batches + elapsed * self.batches.per_s)
            b.bytes = min(self.size.burst, b.bytes + elapsed * self.size.per_s)
            b.at = now
            self._buckets[device_id] = b
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
            if b.batches < 1:
                return f"over {self.batches.per_s:g} batches/s (burst {self.batches.burst:g})"
            if b.bytes < nbytes:
                return f"over {self.size.per_s:g} bytes/s (burst {self.size.burst:g})"
            b.batches -= 1
            b.bytes -= nbytes
            return None
