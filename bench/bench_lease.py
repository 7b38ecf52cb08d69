"""Singleton lease failover: seconds from ``kill -9`` of the process holding a PostgreSQL
advisory-lock lease to a standby process's work running, on a private PostgreSQL
cluster.  The standby polls at the server's default interval (1 s), and the kill
lands at a random phase of that poll (seeded per run), so up to a second of the
figure is waiting for the next try; the baseline is the same standby taking a lease
the holder let go of cleanly (``pg_advisory_unlock``) at the same phases, in the
same run.
Several runs; the median and the worst are reported.  The goal is 15 s.  This is the
lease layer the server's singletons run on; the whole takeover (a killed worker's
rollout finished by the other) is tests/test_replicas.py, untimed.  A host that dies
without closing its sockets is slower: PostgreSQL notices it through TCP keepalives
(see docs/operations.md, "Several replicas")."""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from fleet_server.lease import PgLease, Singleton

ROOT = Path(__file__).resolve().parent.parent
RUNS = 7
INTERVAL_S = 1.0
LABEL = "lease failover after kill -9 of the holder, s"


def _standby(dsn: str, name: str) -> tuple[Singleton, threading.Event]:
    running = threading.Event()
    single = Singleton(PgLease(name, dsn), running.set, running.clear, interval_s=INTERVAL_S)
    return single, running


def _wait(event: threading.Event, timeout: float = 120.0) -> None:
    if not event.wait(timeout):
        raise RuntimeError("the standby never took the lease")


def _phase(run: int) -> float:
    """Where in the standby's poll interval the event lands (same phases for both)."""
    return random.Random(run).uniform(0.0, INTERVAL_S)


def failover_once(dsn: str, run: int) -> float:
    name = f"bench-kill-{run}"
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.lease_holder", name, dsn], cwd=ROOT,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        if not line.startswith("holding"):
            raise RuntimeError(f"the holder did not take the lease: {line!r}")
        single, running = _standby(dsn, name)
        single.start()
        try:
            time.sleep(_phase(run))
            if running.is_set():
                raise RuntimeError("the standby took a lease that was held")
            t0 = time.monotonic()
            os.kill(holder.pid, signal.SIGKILL)
            _wait(running)
            return time.monotonic() - t0
        finally:
            single.stop()
    finally:
        holder.kill()
        holder.wait(30)


def handover_once(dsn: str, run: int) -> float:
    name = f"bench-clean-{run}"
    first = PgLease(name, dsn)
    if not first.try_acquire():
        raise RuntimeError("a fresh lease was taken")
    single, running = _standby(dsn, name)
    single.start()
    try:
        time.sleep(_phase(run))
        t0 = time.monotonic()
        first.release()
        _wait(running)
        return time.monotonic() - t0
    finally:
        single.stop()


def run() -> list[dict[str, object]]:
    from tests.pgserver import PgServer

    server = PgServer().start()
    try:
        with server.database() as dsn:
            clean = [handover_once(dsn, i) for i in range(RUNS)]
            killed = [failover_once(dsn, i) for i in range(RUNS)]
    finally:
        server.destroy()
    base = statistics.median(clean)
    med = statistics.median(killed)
    return [
        {
            "benchmark": LABEL,
            "value": f"{med:.2f}",
            "worst": f"{max(killed):.2f}",
            "baseline": f"{base:.2f}",
            "ratio": f"{med / base:.2f}" if base else "-",
            "note": f"median of {RUNS} runs (worst beside it); standby polls every "
            f"{INTERVAL_S:.0f} s; baseline: clean release, median, worst {max(clean):.2f}",
        }
    ]
