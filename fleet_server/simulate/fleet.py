"""The simulated fleet: identities on disk, the agents of this process, and their tallies."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.identity import Identity
from edgefleet_contract.errors import EdgefleetError
from fleet_server.fleetctl.client import Client

from .device import Counters, SimAgent, ensure_identity, settings_for

log = logging.getLogger(__name__)
Progress = Callable[[int], None]

MAX_PER_PROCESS = 100
"""paho's network loop uses ``select()``, which cannot watch a descriptor numbered 1024
or above; each agent holds about nine (its socket, two SQLite databases with their WAL
and shared-memory files), so past ~110 devices in one process the later sockets break
(the broker logs "Protocol error").  Larger fleets run as several processes."""


class _ErrorTally(logging.Handler):
    """Counts the agents' ERROR records: the summary line's ``errors``."""

    def __init__(self, counters: Counters) -> None:
        super().__init__(logging.ERROR)
        self._counters = counters

    def emit(self, record: logging.LogRecord) -> None:
        self._counters.add("errors")


class Fleet:
    """``count`` devices named ``{prefix}-00000``... with identities under ``root``.

    Identities persist: a later run with the same ``root`` and server reuses
    them (no re-enrollment, no new tokens).  Devices are tagged
    ``simulated={prefix}`` so the server can count them with a selector.
    """

    def __init__(
        self,
        client: Client,
        server_url: str,
        root: Path,
        *,
        count: int,
        prefix: str = "sim",
        interval: float = 10.0,
        model: Path | None = None,
        probation_s: float = 600.0,
    ) -> None:
        self.client = client
        self.server_url = server_url.rstrip("/")
        self.root = root
        self.prefix = prefix
        self.interval = interval
        self.model = model
        self.probation_s = probation_s
        self.ids = [f"{prefix}-{i:05d}" for i in range(count)]
        self.counters = Counters()
        self.agents: list[SimAgent] = []
        self.enrolled_now = 0
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        """Set by Ctrl-C: enrollment and start-up skip the devices not yet begun."""
        logging.getLogger("agent").addHandler(_ErrorTally(self.counters))

    def data_dir(self, device_id: str) -> Path:
        return self.root / device_id

    # -------------------------------------------------------------- enroll --

    def enroll(self, advance: Progress, *, workers: int = 8) -> None:
        """Give every device an identity (enrolling those without one), in parallel."""

        def one(device_id: str) -> None:
            if self.stopping.is_set():
                return
            fresh = ensure_identity(
                self.client, self.server_url, device_id, self.data_dir(device_id), tag=self.prefix
            )
            with self._lock:
                self.enrolled_now += int(fresh)
            advance(1)

        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(one, d) for d in self.ids]:
                future.result()  # the first failure stops the run with its clear message

    # ------------------------------------------------------------- connect --

    def start(self, advance: Progress, *, workers: int = 4) -> None:
        """Start one real agent per device (its link connects in the background)."""

        def one(device_id: str) -> SimAgent | None:
            if self.stopping.is_set():
                return None
            data_dir = self.data_dir(device_id)
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

    def online(self) -> int:
        """Devices of this fleet the server sees online (its store, via the API)."""
        try:
            page = self.client.get(
                "/devices", selector=f"tag:simulated={self.prefix} and online", limit=1
            )
            return int(page["total"])
        except (EdgefleetError, KeyError, TypeError, ValueError) as exc:
            log.warning("cannot count online devices: %s", exc)
            return 0

    # ---------------------------------------------------------------- stop --

    def stop(self, advance: Progress | None = None, *, workers: int = 16) -> None:
        """Stop every agent the way the daemon does on SIGTERM: clean disconnect,
        offline status published, spool closed."""

        def one(agent: SimAgent) -> None:
            try:
                agent.stop()
            except Exception:
                log.exception("stopping %s failed", agent.device_id)
            if advance is not None:
                advance(1)

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, self.agents))
        self.agents.clear()
