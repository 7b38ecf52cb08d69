"""What ``fleetctl simulate`` and its worker processes say to each other.

A fleet larger than one process can hold (see :data:`MAX_PER_PROCESS`) is split
into slices; each slice runs in a worker process started as
``python -m edgefleet_sim.worker``.  The parent writes one :class:`Job`
as the first line of the worker's stdin, then plain commands (``go``: start the
sensors; ``stop``: stop every device cleanly).  The worker writes a
:class:`Status` line to stdout about twice a second; the last one has
``final`` set.  End of stdin (the parent died) stops the worker as ``stop`` does,
so no simulated device outlives its ``fleetctl``.

Everything is one JSON object per line: readable in a log, and no pickling of
objects between two Python processes that might not share a version.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from edgefleet_contract.errors import ContractError

MAX_PER_PROCESS = 100
"""paho's network loop uses ``select()``, which cannot watch a descriptor numbered 1024
or above; each agent holds about nine (its socket, two SQLite databases with their WAL
and shared-memory files), so past ~110 devices in one process the later sockets break
(the broker logs "Protocol error").  Larger fleets run as several processes."""

REPORT_EVERY_S = 0.5
"""How often a worker writes its status line."""
GO = "go"
STOP = "stop"

T = TypeVar("T", "Job", "Status")


@dataclass(frozen=True)
class Job:
    """One worker's slice: devices ``{prefix}-{first:05d}`` … ``{prefix}-{first+count-1:05d}``,
    their identities already enrolled under ``root``."""

    root: str
    prefix: str
    first: int
    count: int
    interval: float = 10.0
    model: str | None = None
    probation_s: float = 600.0
    rate: float = 0.5
    feedback: float = 0.5
    shift: float = 0.0
    shift_after: float = 0.0
    seed: int = 0

    @property
    def device_ids(self) -> list[str]:
        return device_ids(self.prefix, self.first, self.count)


@dataclass(frozen=True)
class Status:
    """Running totals of one worker (the parent adds them up)."""

    started: int = 0
    connected: int = 0
    telemetry: int = 0
    desired: int = 0
    readings: int = 0
    errors: int = 0
    stopped: int = 0
    final: bool = False

    def __add__(self, other: Status) -> Status:
        return Status(
            **{
                f.name: getattr(self, f.name) + getattr(other, f.name)
                for f in fields(self)
                if f.name != "final"
            },
            final=self.final and other.final,
        )


def device_ids(prefix: str, first: int, count: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(first, first + count)]


def encode(message: Job | Status) -> str:
    return json.dumps(asdict(message), separators=(",", ":"))


def decode(kind: type[T], line: str) -> T:
    """Parse one line; a malformed one is a :class:`ContractError` naming what is wrong."""
    try:
        doc: Any = json.loads(line)
        if not isinstance(doc, dict):
            raise TypeError("not a JSON object")
        return kind(**doc)
    except (ValueError, TypeError) as exc:
        raise ContractError(
            f"bad simulator {kind.__name__.lower()} line {line[:80]!r}: {exc}"
        ) from None
