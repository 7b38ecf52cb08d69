"""When a synchronous training round may close before every sampled device answered.

Two field tools against stragglers (Bonawitz et al., "Towards federated learning
at scale", 2019): *over-selection* samples ``1 + over_select`` times the devices
a round needs and closes it as soon as the needed number of good updates is in;
a *round deadline* closes it after ``deadline_s`` with whatever arrived, provided
that is at least the quorum (else the round keeps waiting, up to its timeout).
Devices still owing an answer at the close are counted as stragglers in the
round's failures; their late replies are dropped (the grid counts them).

:class:`RoundClose` is a pure rule over the exchange so far and the time since
the instructions went out, so it is tested without sockets or real time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .spec import RunSpec


class Progress(Protocol):
    @property
    def message_type(self) -> str: ...
    @property
    def sent(self) -> int: ...
    @property
    def replies(self) -> int: ...


@dataclass(frozen=True)
class RoundClose:
    quorum: int
    over_select: float = 0.0
    deadline_s: float | None = None

    def needed(self, sent: int) -> int:
        """Good updates that close the round at once: what it would have sampled
        without over-selection (never below the quorum)."""
        return max(self.quorum, int(sent / (1.0 + self.over_select) + 1e-9))

    def __call__(self, exchange: Progress, elapsed_s: float) -> bool:
        """Whether the round closes now (evaluation rounds always wait for everyone)."""
        if exchange.message_type != "train":
            return False
        if self.over_select > 0 and exchange.replies >= self.needed(exchange.sent):
            return True
        return (
            self.deadline_s is not None
            and elapsed_s >= self.deadline_s
            and exchange.replies >= self.quorum
        )


def round_close(spec: RunSpec) -> RoundClose | None:
    """The run's close rule, or None when every round waits for all it sampled."""
    if spec.over_select == 0 and spec.round_deadline_s is None:
        return None
    return RoundClose(spec.min_clients, spec.over_select, spec.round_deadline_s)
