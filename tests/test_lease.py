"""Singleton leases: exclusive, taken over when the holder dies, lost when its session ends.

PostgreSQL cases run against the session's private cluster (``pg_server``) and a
holder in a separate process, killed with SIGKILL so it gets no chance to let go.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from fleet_server.lease import LocalLease, PgLease, Singleton, advisory_key

from .harness import wait_for

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60.0


class Work:
    """What a singleton runs: counts starts and stops, and whether it runs now."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.starts = 0
        self.stops = 0

    def start(self) -> None:
        self.starts += 1
        self.running.set()

    def stop(self) -> None:
        self.stops += 1
        self.running.clear()


@pytest.fixture
def holder(pg_dsn: str) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def spawn(name: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lease_holder", name, pg_dsn],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until it holds (or died)
        assert line.startswith("holding "), f"the holder did not take the lease: {line!r}"
        return proc

    yield spawn
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def test_local_lease_is_exclusive_within_a_process() -> None:
    a, b = LocalLease("t-local"), LocalLease("t-local")
    assert a.try_acquire()
    assert not b.try_acquire()  # negative: held
    assert a.heartbeat() and not b.heartbeat()
    a.release()
    assert b.try_acquire()  # positive: free again
    b.release()


def test_advisory_keys_are_stable_and_distinct() -> None:
    assert advisory_key("rollouts") == advisory_key("rollouts")
    assert len({advisory_key(n) for n in ("rollouts", "training", "tuf-resign", "retention")}) == 4


def test_pg_lease_is_exclusive_and_released(pg_dsn: str) -> None:
    a, b = PgLease("t-excl", pg_dsn), PgLease("t-excl", pg_dsn)
    try:
        assert a.try_acquire()
        assert not b.try_acquire()
        assert a.heartbeat()
        a.release()
        assert b.try_acquire()
    finally:
        a.release()
        b.release()


def test_kill_9_of_the_holder_hands_the_work_to_another_process(
    pg_dsn: str, holder: Callable[[str], subprocess.Popen[str]]
) -> None:
    proc = holder("t-kill")
    work = Work()
    standby = Singleton(PgLease("t-kill", pg_dsn), work.start, work.stop, interval_s=0.2)
    probe = PgLease("t-kill", pg_dsn)
    try:
        assert not probe.try_acquire()  # negative control: the live holder keeps it
        standby.start()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        wait_for(standby.holding.is_set, TIMEOUT_S, "the standby to take the lease")
        assert work.running.is_set() and work.starts == 1
        assert not probe.try_acquire()  # and now the standby holds it exclusively
    finally:
        standby.stop()
        probe.release()
    assert work.stops == 1 and not work.running.is_set()


def test_a_lost_session_stops_the_work(pg_server: object, pg_dsn: str) -> None:
    work = Work()
    single = Singleton(PgLease("t-lost", pg_dsn), work.start, work.stop, interval_s=0.2)
    single.start()
    try:
        wait_for(single.holding.is_set, TIMEOUT_S, "the lease")
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE %s",
                ("%lease:t-lost",),
            )
        wait_for(lambda: work.stops >= 1, TIMEOUT_S, "the work to stop after the session ended")
        # It comes back by itself once the database answers again (it never went away here).
        wait_for(lambda: work.starts >= 2, TIMEOUT_S, "the lease to be taken again")
    finally:
        single.stop()


def test_unreachable_database_takes_nothing_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lease = PgLease("t-down", "postgresql://postgres@127.0.0.1:1/none")
    assert not lease.try_acquire()
    assert "cannot reach PostgreSQL" in caplog.text
