"""Re-sends desired state to devices that come back behind it.

Commands are QoS 1 on persistent sessions, but a device may have lost its
session (re-flashed, session expired) or rejected a command while busy; the
twin is the source of truth, so whenever a device reports state or comes
online and is behind, it is told again — at most once per interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edgefleet_contract.errors import EdgefleetError

from .store.base import CommandRecord, Store
from .twin import CommandSender, desired_command, needs_resend

log = logging.getLogger(__name__)


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
        self._sender = sender
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
        command = desired_command(device.desired, now=now)
        try:
            self._sender.send_command(device_id, command)
        except EdgefleetError as exc:
            log.warning("could not re-send desired state to %s: %s", device_id, exc)
            return
        self._last[device_id] = (device.desired.version, now)
        self._store.add_command(
            CommandRecord(
                id=command.id,
                device_id=device_id,
                name=command.name,
                args=command.args,
                created_at=now,
                actor="reconciler",
            )
        )
