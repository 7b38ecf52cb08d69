"""The simulated devices one process plays: their real agents and their tallies."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.identity import Identity

from .device import Counters, SimAgent, settings_for

log = logging.getLogger(__name__)
Progress = Callable[[int], None]


class _ErrorTally(logging.Handler):
    """Counts the agents' ERROR records: the summary line's ``errors``."""

    def __init__(self, counters: Counters) -> None:
        super().__init__(logging.ERROR)
        self._counters = counters

    def emit(self, record: logging.LogRecord) -> None:
        self._counters.add("errors")


class Fleet:
    """One real :class:`SimAgent` per device id, each with its identity under ``root``
    (enrolled beforehand by :func:`edgefleet_sim.enroll.enroll_all`)."""

    def __init__(
        self,
        root: Path,
        ids: Sequence[str],
        *,
        interval: float = 10.0,
        model: Path | None = None,
        probation_s: float = 600.0,
    ) -> None:
        self.root = root
        self.ids = list(ids)
        self.interval = interval
        self.model = model
        self.probation_s = probation_s
        self.counters = Counters()
        self.agents: list[SimAgent] = []
        logging.getLogger("agent").addHandler(_ErrorTally(self.counters))

    def start(self, advance: Progress, *, workers: int = 4, halted: Callable[[], bool]) -> None:
        """Start one real agent per device (its link connects in the background);
        devices not yet begun when ``halted()`` turns true are skipped."""

        def one(device_id: str) -> SimAgent | None:
            if halted():
                return None
            data_dir = self.root / device_id
            settings = settings_for(
                data_dir, interval=self.interval, model=self.model, probation_s=self.probation_s
            )
            agent = SimAgent(settings, Identity.load(data_dir), self.counters)
            agent.start()
            advance(1)
            return agent

        with ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(one, d) for d in self.ids]:
                agent = future.result()
                if agent is not None:
                    self.agents.append(agent)

    def connected(self) -> int:
        return sum(agent.link.connected.is_set() for agent in self.agents)

    def stop(self, advance: Progress, *, workers: int = 16) -> None:
        """Stop every agent the way the daemon does on SIGTERM: clean disconnect,
        offline status published, spool closed."""

        def one(agent: SimAgent) -> None:
            try:
                agent.stop()
            except Exception:
                log.exception("stopping %s failed", agent.device_id)
            advance(1)

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, self.agents))
        self.agents.clear()
