"""What ingest tells the rest of the server once a batch is stored, as typed fan-outs.

The server creates one :class:`DeviceEvents` before ingest and hands ingest its
fan-outs as plain callables; each part that wants to hear subscribes once it
exists.  So ingest is built before the MQTT link that acknowledges its messages
and the services that react to devices, and none of them is reached through an
attribute that is not there yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, ParamSpec

from .ingest import Inbound

log = logging.getLogger(__name__)

P = ParamSpec("P")


class Fanout(Generic[P]):
    """Calls every listener in the order they subscribed.

    A listener that raises is logged and the others still hear: the rollout
    driver failing on a report must not keep the reconciler from re-sending.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._listeners: list[Callable[P, None]] = []

    def subscribe(self, listener: Callable[P, None]) -> None:
        self._listeners.append(listener)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for listener in self._listeners:
            try:
                listener(*args, **kwargs)
            except Exception:
                log.exception("%s listener %r failed", self.what, listener)


@dataclass(frozen=True)
class DeviceEvents:
    stored: Fanout[[Inbound]] = field(default_factory=lambda: Fanout("stored message"))
    """A message ingest committed (QoS 1: the link acknowledges it to the broker)."""
    updated: Fanout[[str]] = field(default_factory=lambda: Fanout("device update"))
    """A device whose presence or reported state was just written."""
    frames: Fanout[[str, bytes]] = field(default_factory=lambda: Fanout("federated frame"))
    """A federated-learning frame from a device."""
