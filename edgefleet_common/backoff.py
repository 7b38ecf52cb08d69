"""Capped exponential backoff with jitter, as a plain object.

Reconnect storms are what take brokers down when a site's network blips: ten
thousand devices retrying on the same schedule hit the broker in lockstep.
"Equal jitter" keeps a floor (half the exponential delay) so a device never
spins, and spreads the rest uniformly so retries de-synchronise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts as one failed attempt."""
        ceiling = min(self.maximum, self.initial * self.multiplier**self._attempt)
        self._attempt = min(self._attempt + 1, 64)
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        """Call after a success so the next failure starts small again."""
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt
