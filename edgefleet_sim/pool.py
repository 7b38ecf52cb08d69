"""The parent's side of a multi-process simulated fleet: start the workers, add up
their status lines, stop them cleanly (see :mod:`.protocol`)."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from edgefleet_contract.errors import ContractError, EdgefleetError

from .protocol import GO, STOP, Job, Status, decode, encode

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 120.0
"""A worker stops its devices 16 at a time, each in at most a few seconds."""


class WorkerFailed(EdgefleetError):
    """A worker process ended before it was asked to stop."""


class _Worker:
    def __init__(self, index: int, job: Job, log_path: Path) -> None:
        self.index = index
        self.job = job
        self.log_path = log_path
        self.status = Status()
        self._log: IO[bytes] = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet_sim.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"sim-worker-{index}", daemon=True)
        self._reader.start()
        self.send(encode(job))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # it has exited; failure() says so with its log

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.status = decode(Status, line)
            except ContractError as exc:
                log.warning("simulator worker %d: %s", self.index, exc)

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def close(self) -> None:
        self._reader.join(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                # a dead worker's stdin still holds the unsent "stop": flushing it on
                # close raises EPIPE, which click would turn into a silent exit 1
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()


class WorkerPool:
    """One worker process per job; their logs go to ``log_dir/worker-NN.log``."""

    def __init__(self, jobs: list[Job], log_dir: Path) -> None:
        self.jobs = jobs
        self.log_dir = log_dir
        self._workers: list[_Worker] = []
        self._stopping = False

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for i, job in enumerate(self.jobs):
            self._workers.append(_Worker(i, job, self.log_dir / f"worker-{i:02d}.log"))

    def __len__(self) -> int:
        return len(self._workers)

    def total(self) -> Status:
        total = Status(final=True)
        for worker in self._workers:
            total = total + worker.status
        return total

    def alive(self) -> int:
        return sum(w.proc.poll() is None for w in self._workers)

    def go(self) -> None:
        """Start the sensors everywhere (once every device is online)."""
        for worker in self._workers:
            worker.send(GO)

    def check(self) -> None:
        """Raise :class:`WorkerFailed` with the worker's last log lines if one has ended
        before it was asked to stop."""
        if self._stopping:
            return
        for w in self._workers:
            code = w.proc.poll()
            if code is not None:
                raise WorkerFailed(
                    f"simulator worker {w.index} ({w.job.prefix}-{w.job.first:05d}, "
                    f"{w.job.count} devices) exited with code {code}; its log "
                    f"{w.log_path} ends with:\n{w.tail()}"
                )

    def kill(self) -> None:
        """End every worker at once; their devices go offline through their Last Will."""
        self._stopping = True
        for w in self._workers:
            if w.proc.poll() is None:
                w.proc.kill()

    def stop(self, on_tick: Callable[[Status], None] | None = None) -> None:
        """Ask every worker to stop its devices cleanly and wait for them all; one that
        does not finish within :data:`STOP_TIMEOUT_S` is killed."""
        self._stopping = True
        for worker in self._workers:
            worker.send(STOP)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(w.proc.poll() is None for w in self._workers):
            if on_tick is not None:
                on_tick(self.total())
            if time.monotonic() > deadline:
                for w in self._workers:
                    if w.proc.poll() is None:
                        log.error("simulator worker %d did not stop; killing it", w.index)
                        w.proc.kill()
                break
            time.sleep(0.2)
        for worker in self._workers:
            worker.proc.wait()
            worker.close()
        if on_tick is not None:
            on_tick(self.total())
