"""Re-sends desired state to devices that come back behind it.

Commands are QoS 1 on persistent sessions, but a device may have lost its
session (re-flashed, session expired) or rejected a command while busy; the
twin is the source of truth, so whenever a device reports state or comes
online and is behind, it is told again — at most once per interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .store.base import Store
from .twin import CommandSender, Twin, needs_resend


class Reconciler:
    def __init__(
        self,
        store: Store,
        sender: CommandSender,
        *,
        min_interval_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._twin = Twin(store, sender, clock=clock)
        self._interval = min_interval_s
        self._clock = clock
        self._last: dict[str, tuple[int, float]] = {}

    def __call__(self, device_id: str) -> None:
        device = self._store.get_device(device_id)
        if not needs_resend(device) or device.desired is None:
            return
        now = self._clock()
        last = self._last.get(device_id)
        if (
            last is not None
            and last[0] == device.desired.version
            and now - last[1] < self._interval
        ):
            return
        if self._twin.resend(device_id, device.desired, actor="reconciler"):
            self._last[device_id] = (device.desired.version, now)
