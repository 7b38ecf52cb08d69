"""A worker process of ``fleetctl simulate``: one slice of the fleet (see :mod:`.protocol`).

Run as ``python -m edgefleet_sim.worker``; the parent writes the job on
stdin.  Ctrl-C reaches the whole process group, so the worker ignores SIGINT
and waits for the parent's ``stop``: the parent decides when and shows the
shutdown's progress.  SIGTERM or the end of stdin stops it too.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from edgefleet_common.fdlimit import raise_fd_limit
from edgefleet_contract.errors import EdgefleetError

from .fleet import Fleet
from .protocol import GO, REPORT_EVERY_S, STOP, Job, Status, decode, encode
from .sensors import Sensors, Shift

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, job: Job, out: TextIO) -> None:
        self.job = job
        self._out = out
        self._out_lock = threading.Lock()
        self._tally_lock = threading.Lock()
        self.fleet = Fleet(
            Path(job.root),
            job.device_ids,
            interval=job.interval,
            model=Path(job.model) if job.model else None,
            probation_s=job.probation_s,
        )
        self.sensors: Sensors | None = None
        self.started = 0
        self.stopped = 0
        self.go = threading.Event()
        self.halt = threading.Event()
        self._done = threading.Event()

    # ------------------------------------------------------------ commands --

    def listen(self, commands: TextIO) -> None:
        """The parent's commands; end of input (the parent is gone) means stop."""
        for line in commands:
            word = line.strip()
            if word == GO:
                self.go.set()
            elif word == STOP:
                break
            elif word:
                log.warning("unknown simulator command %r ignored", word[:40])
        self.halt.set()

    # ------------------------------------------------------------- reports --

    def status(self, *, final: bool = False) -> Status:
        c = self.fleet.counters
        return Status(
            started=self.started,
            connected=self.fleet.connected(),
            telemetry=c.telemetry,
            desired=c.desired,
            readings=self.sensors.readings if self.sensors else 0,
            errors=c.errors,
            stopped=self.stopped,
            final=final,
        )

    def emit(self, status: Status) -> None:
        with self._out_lock:
            try:
                self._out.write(encode(status) + "\n")
                self._out.flush()
            except (BrokenPipeError, ValueError):  # the parent is gone: stop
                self.halt.set()

    def _report_loop(self) -> None:
        while not self._done.wait(REPORT_EVERY_S):
            self.emit(self.status())

    def _count(self, name: str) -> None:
        with self._tally_lock:
            setattr(self, name, getattr(self, name) + 1)

    # --------------------------------------------------------------- run --

    def run(self) -> None:
        reporter = threading.Thread(target=self._report_loop, name="report", daemon=True)
        reporter.start()
        try:
            self.fleet.start(lambda _: self._count("started"), halted=self.halt.is_set)
            while not self.halt.is_set():
                if self.go.wait(0.2):
                    self._start_sensors()
                    break
            self.halt.wait()
        finally:
            if self.sensors is not None:
                self.sensors.stop()
            self.fleet.stop(lambda _: self._count("stopped"))
            self._done.set()
            reporter.join(5)
            self.emit(self.status(final=True))

    def _start_sensors(self) -> None:
        job = self.job
        self.sensors = Sensors(
            [agent.service for agent in self.fleet.agents],
            rate=job.rate,
            feedback=job.feedback,
            shift=Shift(job.shift, job.shift_after),
            on_error=lambda: self.fleet.counters.add("errors"),
            seed=job.seed,
        )
        self.sensors.start()


def _protocol_stdout() -> TextIO:
    """Keep the real stdout for status lines and send everything else that writes to
    fd 1 (a library's print, a C extension) to stderr, the worker's log."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = _protocol_stdout()
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        job = decode(Job, sys.stdin.readline())
        raise_fd_limit(job.count * 10 + 256)  # about nine per device, and some to spare
        worker = Worker(job, out)
    except EdgefleetError as exc:
        log.error("%s", exc)
        return 2

    def terminate(*_: Any) -> None:
        worker.halt.set()

    signal.signal(signal.SIGTERM, terminate)
    threading.Thread(target=worker.listen, args=(sys.stdin,), name="commands", daemon=True).start()
    try:
        worker.run()
    except EdgefleetError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
