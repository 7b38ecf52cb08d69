"""What ``fleetctl simulate`` shows: progress while the fleet comes up, then one live line."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgefleet_contract.errors import EdgefleetError
from fleet_server.simulate.fleet import Fleet
from fleet_server.simulate.sensors import Sensors

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


class Watch:
    def __init__(self, fleet: Fleet, stop: threading.Event) -> None:
        self.fleet = fleet
        self.stop = stop
        self.all_online_s: float | None = None

    def bring_up(self, timeout: float) -> None:
        """Enroll, start and wait until the server sees every device online."""
        fleet, n = self.fleet, len(self.fleet.ids)
        started = time.monotonic()
        with _progress() as progress:
            enrolled = progress.add_task("enrolled", total=n)
            fleet.enroll(lambda k: progress.advance(enrolled, k))
            agents = progress.add_task("agents started", total=n)
            connected = progress.add_task("connected (mTLS)", total=n)
            online = progress.add_task("online (server)", total=n)

            def poll() -> int:
                progress.update(connected, completed=fleet.connected())
                seen = fleet.online()
                progress.update(online, completed=seen)
                return seen

            ticker = threading.Thread(target=self._tick, args=(poll,), daemon=True)
            ticker.start()
            fleet.start(lambda k: progress.advance(agents, k))
            deadline = time.monotonic() + timeout
            while not self.stop.is_set():
                if poll() >= n:
                    self.all_online_s = round(time.monotonic() - started, 2)
                    break
                if time.monotonic() > deadline:
                    raise EdgefleetError(
                        f"only {fleet.online()} of {n} simulated devices came online within "
                        f"{timeout:.0f} s (see the broker's connection limit and the server log)"
                    )
                self.stop.wait(1.0)
            self._ticking = False

    _ticking = True

    def _tick(self, poll: Callable[[], int]) -> None:
        while self._ticking and not self.stop.is_set():
            with contextlib.suppress(Exception):  # a display refresh never stops the run
                poll()
            self.stop.wait(1.0)

    def run(self, duration: float, sensors: Sensors) -> None:
        """The live summary line until ``duration`` (0: until Ctrl-C)."""
        fleet, n = self.fleet, len(self.fleet.ids)
        c = fleet.counters
        end = time.monotonic() + duration if duration else None
        last, last_t = c.telemetry, time.monotonic()
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            while not self.stop.wait(1.0):
                now = time.monotonic()
                rate = (c.telemetry - last) / max(now - last_t, 1e-6)
                last, last_t = c.telemetry, now
                live.update(
                    f"online {fleet.online()}/{n} · connected {fleet.connected()} · "
                    f"telemetry {rate:.1f} batches/s ({c.telemetry}) · readings "
                    f"{sensors.readings} · desired applied {c.desired} · errors {c.errors}"
                )
                if end is not None and now >= end:
                    break

    def shut_down(self) -> None:
        """Stop every agent cleanly (offline status published, spools closed)."""
        fleet = self.fleet
        self._ticking = False
        if not fleet.agents:
            return
        with _progress() as progress:
            task = progress.add_task("disconnecting", total=len(fleet.agents))
            fleet.stop(lambda k: progress.advance(task, k))
