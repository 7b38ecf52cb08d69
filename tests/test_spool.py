"""The agent's outbox: bounded, FIFO, durable across kill -9, self-healing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.spool import DrainPolicy, Spool


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_fifo_ack_and_idempotence(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=10_000, max_age_s=100)
    ids = [spool.push("devices/d/telemetry", f"m{i}".encode()) for i in range(5)]
    assert [e.payload for e in spool.peek(10)] == [f"m{i}".encode() for i in range(5)]
    assert [e.id for e in spool.peek(2, after_id=ids[1])] == ids[2:4]
    spool.ack(ids[0])
    spool.ack(ids[0])
    stats = spool.stats()
    assert stats.depth == 4 and stats.bytes == 8 and stats.dropped_total == 0


def test_size_bound_drops_oldest_and_counts_persistently(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = Spool(path, max_bytes=100, max_age_s=1e9)
    for i in range(30):
        spool.push("t", bytes([i]) * 10)
    left = spool.peek(100)
    assert sum(len(e.payload) for e in left) <= 100
    assert left[-1].payload == bytes([29]) * 10  # newest kept
    assert left[0].payload == bytes([20]) * 10  # oldest dropped first
    assert spool.stats().dropped_total == 20
    spool.close()
    assert Spool(path, max_bytes=100, max_age_s=1e9).stats().dropped_total == 20


def test_age_bound(tmp_path: Path) -> None:
    clock = Clock()
    spool = Spool(tmp_path / "s.db", max_bytes=10_000, max_age_s=60, clock=clock)
    spool.push("t", b"old")
    clock.t += 61
    spool.push("t", b"new")
    assert [e.payload for e in spool.peek(10)] == [b"new"]
    stats = spool.stats()
    assert stats.dropped_total == 1 and stats.oldest_age_s == 0.0


def test_survives_kill_9(tmp_path: Path) -> None:
    """Entries whose push returned are on disk, even when the process dies mid-stream."""
    path = tmp_path / "s.db"
    marker = tmp_path / "pushed"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from agent.spool import Spool
        spool = Spool(Path({str(path)!r}), max_bytes=10**8, max_age_s=1e9)
        marker = open({str(marker)!r}, "w")
        i = 0
        while True:
            spool.push("devices/d/telemetry", b"batch-%d" % i)
            marker.write(f"{{i}}\\n"); marker.flush()
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    try:
        while not marker.exists() or marker.read_text().count("\n") < 200:
            assert proc.poll() is None, "writer died"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    confirmed = marker.read_text().count("\n")
    entries = Spool(path, max_bytes=10**8, max_age_s=1e9).peek(10**6)
    assert len(entries) >= confirmed
    assert [e.payload for e in entries] == [b"batch-%d" % i for i in range(len(entries))]


def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    spool = Spool(path, max_bytes=1000, max_age_s=100)
    spool.push("t", b"x")
    assert spool.stats().depth == 1
    assert list(tmp_path.glob("s.db.corrupt-*"))


def test_drain_policy_rate_and_window() -> None:
    policy = DrainPolicy(rate_per_s=10, burst=5, max_inflight=3)
    assert policy.allowance(0.0, inflight=0) == 3  # window-limited
    assert policy.allowance(0.0, inflight=3) == 0
    assert policy.allowance(0.0, inflight=0) == 2  # burst of 5 spent
    assert policy.allowance(0.0, inflight=0) == 0
    assert policy.allowance(0.5, inflight=0) == 3  # 5 tokens refilled, window 3


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=40), bound=st.integers(60, 400))
def test_bound_invariant(sizes: list[int], bound: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        spool = Spool(Path(d) / "s.db", max_bytes=bound, max_age_s=1e9)
        for i, size in enumerate(sizes):
            spool.push("t", bytes([i % 256]) * size)
        entries = spool.peek(1000)
        stats = spool.stats()
        assert stats.bytes == sum(len(e.payload) for e in entries) <= bound
        assert stats.depth + stats.dropped_total == len(sizes)
        assert entries[-1].payload == bytes([(len(sizes) - 1) % 256]) * sizes[-1]
        spool.close()
