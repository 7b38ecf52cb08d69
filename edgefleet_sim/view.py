"""What ``fleetctl simulate`` shows: progress while the fleet comes up, then one live line."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgefleet_contract.errors import EdgefleetError
from edgefleet_sim.pool import WorkerPool
from edgefleet_sim.protocol import REPORT_EVERY_S

console = Console(stderr=True)
Advance = Callable[[int], None]


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


class Watch:
    """Drives the pool through bring-up, run and shut-down while showing each.

    ``online`` asks the server how many of the fleet's devices it sees online:
    the figure that matters, since a connected socket is not yet a device the
    server has heard from.
    """

    def __init__(
        self, pool: WorkerPool, devices: int, online: Callable[[], int], stop: threading.Event
    ) -> None:
        self.pool = pool
        self.devices = devices
        self.online = online
        self.stop = stop
        self.all_online_s: float | None = None

    def bring_up(self, enroll: Callable[[Advance], None], timeout: float) -> None:
        """Enroll, start the workers and wait until the server sees every device online."""
        n, pool = self.devices, self.pool
        started = time.monotonic()
        with _progress() as progress:
            enrolled = progress.add_task("enrolled", total=n)
            enroll(lambda k: progress.advance(enrolled, k))
            if self.stop.is_set():
                return
            agents = progress.add_task(f"agents started ({len(pool.jobs)} proc)", total=n)
            connected = progress.add_task("connected (mTLS)", total=n)
            online = progress.add_task("online (server)", total=n)
            pool.start()
            deadline = time.monotonic() + timeout

            def show_workers() -> None:
                total = pool.total()
                progress.update(agents, completed=total.started)
                progress.update(connected, completed=total.connected)

            while not self.stop.is_set():
                pool.check()
                show_workers()
                seen = self.online()
                progress.update(online, completed=seen)
                if seen >= n:
                    self.all_online_s = round(time.monotonic() - started, 2)
                    self.stop.wait(2 * REPORT_EVERY_S)  # the workers' next status lines
                    show_workers()
                    return
                if time.monotonic() > deadline:
                    raise EdgefleetError(
                        f"only {seen} of {n} simulated devices came online within "
                        f"{timeout:.0f} s (see the broker's connection limit, the server log "
                        f"and the worker logs in {pool.log_dir})"
                    )
                self.stop.wait(1.0)

    def run(self, duration: float) -> None:
        """Sensors on, then the live summary line until ``duration`` (0: until Ctrl-C)."""
        pool, n = self.pool, self.devices
        pool.go()
        end = time.monotonic() + duration if duration else None
        last, last_t = pool.total().telemetry, time.monotonic()
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            while not self.stop.wait(1.0):
                pool.check()
                now, total = time.monotonic(), pool.total()
                rate = (total.telemetry - last) / max(now - last_t, 1e-6)
                last, last_t = total.telemetry, now
                live.update(
                    f"online {self.online()}/{n} · connected {total.connected} · "
                    f"processes {pool.alive()}/{len(pool)} · telemetry {rate:.1f} batches/s "
                    f"({total.telemetry}) · readings {total.readings} · desired applied "
                    f"{total.desired} · errors {total.errors}"
                )
                if end is not None and now >= end:
                    break
        if not console.is_terminal:
            console.line()  # a log file gets the last line whole, not run into the next

    def shut_down(self) -> None:
        """Stop every device cleanly (offline status published, spools closed)."""
        pool = self.pool
        if not len(pool):
            return
        with _progress() as progress:
            task = progress.add_task("disconnecting", total=max(pool.total().started, 1))
            pool.stop(lambda total: progress.update(task, completed=total.stopped))
