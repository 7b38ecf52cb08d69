"""Long-lived daemon threads: one holder for starting, stopping and looping on an interval.

The server and the agent run many loops beside their main work (the lease holder,
telemetry retention, TUF re-signing, the rollout ticks, the ingest writer, the MQTT
network thread, ...).  Each used to carry its own copy of the same few lines -- a
stop event, a daemon thread started on it, a ``stop()`` that sets and joins, a loop
that logs a failed step and goes on -- and the copies had drifted (some cleared the
event on start so a lease could restart them, some did not).  They take these two
classes instead, so every such thread restarts, stops and survives a bad step alike,
and their hooks go through :func:`call_guarded`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


def call_guarded(
    fn: Callable[[], object], log: logging.Logger, failure: str, *args: object
) -> bool:
    """Run ``fn``; if it raises, log ``failure % args`` with the traceback and return False.

    For the hooks and steps a long-lived thread calls: a bug in one must not end the
    thread (the network loop, the ingest writer, a lease holder) for the life of the process.
    """
    try:
        fn()
    except Exception:
        log.exception(failure, *args)
        return False
    return True


class BackgroundThread:
    """A daemon thread running ``target`` and the event that asks it to stop.

    ``target`` watches :attr:`stopping` (``wait`` on it between steps, or test it);
    :meth:`start` clears it first, so a holder stopped once (a lease lost) can start
    again.
    """

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        self.name = name
        self._target = target
        self.stopping = threading.Event()
        """Set by :meth:`stop`; the thread's loop ends when it sees it."""
        self._thread: threading.Thread | None = None

    @property
    def thread(self) -> threading.Thread | None:
        """The running thread (None before :meth:`start` and after :meth:`stop`)."""
        return self._thread

    def start(self) -> None:
        self.stopping.clear()
        self._thread = threading.Thread(target=self._target, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end and wait up to ``timeout`` seconds for it."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


class IntervalThread(BackgroundThread):
    """Runs ``step`` every ``interval_s()`` seconds until stopped; the first run is after
    one interval (or after ``first_wait_s``).

    A step may return the wait before the next one (a timer that knows when it is due);
    ``None`` means the interval, read anew each time so a caller may change it.  A step
    that raises is logged with ``failure`` and its traceback, ``on_error`` runs (a
    counter), and the loop goes on after ``retry_s`` (default: the interval): one bad
    pass must not end the loop for the life of the process.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], float | None],
        *,
        interval_s: Callable[[], float],
        log: logging.Logger,
        failure: str,
        first_wait_s: float | None = None,
        retry_s: float | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name, self._loop)
        self._step = step
        self._interval_s = interval_s
        self._log = log
        self._failure = failure
        self._first_wait_s = first_wait_s
        self._retry_s = retry_s
        self._on_error = on_error

    def _loop(self) -> None:
        wait = self._interval_s() if self._first_wait_s is None else self._first_wait_s
        while not self.stopping.wait(wait):
            try:
                after = self._step()
            except Exception:
                self._log.exception(self._failure)
                if self._on_error is not None:
                    self._on_error()
                after = self._retry_s
            wait = self._interval_s() if after is None else after
