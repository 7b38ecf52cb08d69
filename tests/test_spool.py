"""The agent's outbox: bounded, FIFO, durable across kill -9, self-healing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.spool import DrainPolicy, Spool, SpoolEntry
from edgefleet_contract.errors import ConfigError, LinkError, StoreError


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
    deadline = time.monotonic() + 60
    try:
        while not marker.exists() or marker.read_text().count("\n") < 200:
            assert proc.poll() is None, "writer died"
            assert time.monotonic() < deadline, "writer made no progress"
            time.sleep(0.01)
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


def test_stale_entries_expire_on_open(tmp_path: Path) -> None:
    """A device switched off for longer than max_age does not replay ancient batches."""
    clock = Clock()
    path = tmp_path / "s.db"
    spool = Spool(path, max_bytes=10_000, max_age_s=60, clock=clock)
    spool.push("t", b"a")
    spool.push("t", b"b")
    spool.close()
    clock.t += 3600
    reopened = Spool(path, max_bytes=10_000, max_age_s=60, clock=clock)
    stats = reopened.stats()
    assert (stats.depth, stats.bytes, stats.dropped_total) == (0, 0, 2)


def test_age_drop_keeps_the_outbox_contiguous_when_the_clock_steps_back(tmp_path: Path) -> None:
    clock = Clock(10_000.0)
    spool = Spool(tmp_path / "s.db", max_bytes=10_000, max_age_s=60, clock=clock)
    spool.push("t", b"first")
    clock.t = 5_000.0  # NTP correction backwards
    spool.push("t", b"second")
    clock.t = 10_100.0  # "first" is 100 s old, "second" looks ancient
    spool.push("t", b"third")
    # Everything before the newest stale entry goes, oldest first; nothing skips the queue.
    assert [e.payload for e in spool.peek(10)] == [b"third"]
    assert spool.stats().dropped_total == 2


def test_oversized_and_invalid_pushes_are_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=100, max_age_s=60)
    spool.push("t", b"keep")
    with pytest.raises(StoreError, match="max_bytes"):
        spool.push("t", b"x" * 101)
    with pytest.raises(LinkError, match="qos"):
        spool.push("t", b"x", qos=3)
    assert [e.payload for e in spool.peek(10)] == [b"keep"]
    with pytest.raises(ConfigError):
        Spool(tmp_path / "t.db", max_bytes=0, max_age_s=60)
    with pytest.raises(ConfigError):
        DrainPolicy(rate_per_s=0, burst=1, max_inflight=1)


def test_damage_found_at_open_by_quick_check(tmp_path: Path) -> None:
    """A valid header over garbage pages opens, fails quick_check, and is replaced."""
    path = tmp_path / "s.db"
    spool = Spool(path, max_bytes=10**7, max_age_s=1e9)
    for _ in range(40):
        spool.push("t", os.urandom(3000))
    spool.close()  # checkpoints the WAL into the main file
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(4096)
        f.write(b"\xa5" * (size - 4096))
    fresh = Spool(path, max_bytes=10**7, max_age_s=1e9)
    assert fresh.stats().depth == 0 and fresh.corrupt_recoveries == 1
    assert fresh.push("t", b"works") >= 1
    aside = [p for p in tmp_path.glob("s.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1
    fresh.close()
    assert Spool(path, max_bytes=10**7, max_age_s=1e9).corrupt_recoveries == 1


def test_damage_found_while_running_keeps_the_push(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = Spool(path, max_bytes=10**7, max_age_s=1e9)
    for _ in range(40):
        spool.push("t", os.urandom(3000))
    with sqlite3.connect(path) as other:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(4096)
        f.write(b"\xa5" * (size - 4096))
    with sqlite3.connect(path) as other:  # another writer invalidates our page cache
        other.execute("PRAGMA user_version = 7")
    entry_id = spool.push("devices/d/telemetry", b"must arrive")
    assert [(e.id, e.payload) for e in spool.peek(10)] == [(entry_id, b"must arrive")]
    assert spool.corrupt_recoveries == 1
    assert list(tmp_path.glob("s.db.corrupt-*"))


def test_replayed_counter_persists(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = Spool(path, max_bytes=1000, max_age_s=100)
    spool.note_replayed(3)
    spool.note_replayed(0)
    spool.close()
    assert Spool(path, max_bytes=1000, max_age_s=100).stats().replayed_total == 3


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.integers(1, 50)),
            st.tuples(st.just("ack"), st.integers(0, 30)),
            st.tuples(st.just("tick"), st.integers(1, 40)),
            st.tuples(st.just("reopen"), st.just(0)),
        ),
        max_size=60,
    )
)
def test_outbox_matches_a_model_queue(ops: list[tuple[str, int]]) -> None:
    """Against a plain list: FIFO order, byte/age bounds, idempotent acks, restarts."""
    import tempfile

    bound, max_age = 200, 100.0
    clock = Clock()
    model: list[tuple[int, bytes, float]] = []  # (id, payload, created_at)
    dropped = 0
    pushed = 0
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.db"
        spool = Spool(path, max_bytes=bound, max_age_s=max_age, clock=clock)
        for op, arg in ops:
            if op == "push":
                payload = pushed.to_bytes(4, "big") * (arg // 4 + 1)
                pushed += 1
                entry_id = spool.push("t", payload)
                model.append((entry_id, payload, clock.t))
                stale = [i for i, m in enumerate(model[:-1]) if m[2] < clock.t - max_age]
                cut = stale[-1] + 1 if stale else 0
                while sum(len(m[1]) for m in model[cut:]) > bound:
                    cut += 1
                dropped += cut
                model = model[cut:]
            elif op == "ack" and model:
                victim = model[arg % len(model)][0]
                spool.ack(victim)
                spool.ack(victim)
                model = [m for m in model if m[0] != victim]
            elif op == "tick":
                clock.t += arg
            elif op == "reopen":
                spool.close()
                spool = Spool(path, max_bytes=bound, max_age_s=max_age, clock=clock)
                cut = 0
                stale = [i for i, m in enumerate(model) if m[2] < clock.t - max_age]
                cut = stale[-1] + 1 if stale else 0
                dropped += cut
                model = model[cut:]
            entries = spool.peek(1000)
            assert [(e.id, e.payload) for e in entries] == [(m[0], m[1]) for m in model]
            stats = spool.stats()
            assert stats.bytes == sum(len(m[1]) for m in model) <= bound
            assert stats.dropped_total == dropped
        spool.close()


def _damage_tail(path: Path) -> None:
    """Overwrite the last pages (the payloads) and leave the counters' page readable."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(size - 3 * 4096)
        f.write(b"\xa5" * (3 * 4096))


def _filled(path: Path, clock: Clock) -> Spool:
    spool = Spool(path, max_bytes=10**7, max_age_s=1e9, clock=clock)
    for _ in range(40):
        spool.push("t", os.urandom(3000))
    return spool


def test_a_damaged_spool_is_set_aside_under_a_unique_name_with_its_counters_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, clock = tmp_path / "s.db", Clock(1234.9)
    spool = _filled(path, clock)
    spool.note_replayed(1)
    spool.close()
    (tmp_path / "s.db.corrupt-1234").write_bytes(b"an older one")
    _damage_tail(path)
    with caplog.at_level("ERROR", logger="agent.spool"):
        fresh = Spool(path, max_bytes=10**7, max_age_s=1e9, clock=clock)
    aside = tmp_path / "s.db.corrupt-1234-1"
    assert aside.exists() and (tmp_path / "s.db.corrupt-1234").read_bytes() == b"an older one"
    assert (tmp_path / "s.db.corrupt-1234-1-wal").exists()
    assert (tmp_path / "s.db.corrupt-1234-1-shm").exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"spool {path} was damaged (database disk image is malformed); moved to {aside}, "
        "starting empty (0 queued entries lost)"
    ]
    stats = fresh.stats()
    assert (stats.depth, stats.bytes, stats.replayed_total) == (0, 0, 1)
    assert fresh.corrupt_recoveries == 1
    for _ in range(40):
        fresh.push("t", os.urandom(3000))
    fresh.close()
    _damage_tail(path)
    again = Spool(path, max_bytes=10**7, max_age_s=1e9, clock=clock)
    assert (tmp_path / "s.db.corrupt-1234-2").exists()
    assert again.corrupt_recoveries == 2 and again.stats().replayed_total == 1


def test_damage_found_while_running_starts_the_byte_count_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.db"
    spool = _filled(path, Clock())
    with sqlite3.connect(path) as other:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _damage_tail(path)
    with sqlite3.connect(path) as other:  # another writer invalidates our page cache
        other.execute("PRAGMA user_version = 7")
    with caplog.at_level("ERROR", logger="agent.spool"):
        spool.push("t", b"12345")
    assert "was damaged (database disk image is malformed)" in caplog.records[-1].getMessage()
    assert spool.corrupt_recoveries == 1
    assert (spool.stats().depth, spool.stats().bytes) == (1, 5)


def test_a_single_replay_is_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=1000, max_age_s=100)
    spool.note_replayed(1)
    assert spool.stats().replayed_total == 1


def test_only_damage_is_treated_as_damage() -> None:
    from agent.spool import _is_corrupt

    def error(kind: type[sqlite3.DatabaseError], code: int | None) -> sqlite3.DatabaseError:
        exc = kind("x")
        if code is not None:
            exc.sqlite_errorcode = code  # type: ignore[attr-defined]
        return exc

    assert _is_corrupt(error(sqlite3.DatabaseError, sqlite3.SQLITE_CORRUPT))
    assert _is_corrupt(error(sqlite3.DatabaseError, sqlite3.SQLITE_NOTADB))
    assert _is_corrupt(error(sqlite3.DatabaseError, sqlite3.SQLITE_CORRUPT | 0x100))  # extended
    assert not _is_corrupt(error(sqlite3.OperationalError, sqlite3.SQLITE_BUSY))
    assert not _is_corrupt(error(sqlite3.DatabaseError, sqlite3.SQLITE_FULL))
    assert _is_corrupt(error(sqlite3.DatabaseError, None))  # our own quick_check finding
    assert not _is_corrupt(error(sqlite3.OperationalError, None))


def test_what_a_damaged_spool_still_held_is_counted_as_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A freelist count that lies fails quick_check but leaves every table readable."""
    path = tmp_path / "s.db"
    spool = Spool(path, max_bytes=2000, max_age_s=1e9)
    spool.note_replayed(4)
    for _ in range(5):
        spool.push("t", b"x" * 500)  # the fifth push drops the oldest: dropped 1, depth 4
    assert (spool.stats().depth, spool.stats().dropped_total) == (4, 1)
    spool.close()
    with path.open("r+b") as f:
        f.seek(36)  # the header's freelist page count
        f.write((5).to_bytes(4, "big"))
    with caplog.at_level("ERROR", logger="agent.spool"):
        fresh = Spool(path, max_bytes=10**7, max_age_s=1e9)
    assert caplog.records[-1].getMessage().endswith("starting empty (4 queued entries lost)")
    stats = fresh.stats()
    assert (stats.depth, stats.dropped_total, stats.replayed_total) == (0, 5, 4)
    assert fresh.corrupt_recoveries == 1


def test_a_negative_counter_in_a_damaged_spool_is_not_carried_over(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Spool(path, max_bytes=2000, max_age_s=1e9).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO counters (name, value) VALUES ('replayed', -3)")
        db.execute("INSERT INTO counters (name, value) VALUES ('dropped', 2)")
    with path.open("r+b") as f:
        f.seek(36)
        f.write((5).to_bytes(4, "big"))
    stats = Spool(path, max_bytes=2000, max_age_s=1e9).stats()
    assert (stats.replayed_total, stats.dropped_total) == (0, 2)


def test_drain_policy_bounds_are_checked_and_the_smallest_valid_one_works() -> None:
    for bad in ((0, 1, 1), (1, 0, 1), (1, 1, 0)):
        with pytest.raises(ConfigError) as refused:
            DrainPolicy(rate_per_s=bad[0], burst=bad[1], max_inflight=bad[2])
        assert str(refused.value) == (
            "drain policy needs rate_per_s > 0, burst >= 1 and max_inflight >= 1 "
            f"(got {bad[0]}, {bad[1]}, {bad[2]})"
        )
    smallest = DrainPolicy(rate_per_s=0.5, burst=1, max_inflight=1)
    assert smallest.allowance(100.0, inflight=0) == 1
    assert smallest.allowance(100.0, inflight=0) == 0
    assert smallest.allowance(101.0, inflight=0) == 0  # half a token
    assert smallest.allowance(102.0, inflight=0) == 1


def test_drain_policy_refills_from_the_time_elapsed_not_the_clock_value() -> None:
    policy = DrainPolicy(rate_per_s=10, burst=5, max_inflight=10)
    assert policy.allowance(1000.0, inflight=0) == 5
    assert policy.allowance(1000.1, inflight=0) == 1  # 0.1 s at 10/s
    assert policy.allowance(999.0, inflight=0) == 0  # a step back adds nothing


def test_smallest_bounds_are_accepted_and_zero_is_refused(tmp_path: Path) -> None:
    tiny = Spool(tmp_path / "new" / "dir" / "s.db", max_bytes=1, max_age_s=0.5)
    assert tiny.push("t", b"x") >= 1
    for max_bytes, max_age_s in ((0, 1.0), (1, 0.0)):
        with pytest.raises(ConfigError) as refused:
            Spool(tmp_path / "s.db", max_bytes=max_bytes, max_age_s=max_age_s)
        assert str(refused.value) == (
            f"spool bounds must be positive (max_bytes={max_bytes}, max_age_s={max_age_s})"
        )


def test_entries_come_back_as_they_were_pushed(tmp_path: Path) -> None:
    clock = Clock(500.0)
    spool = Spool(tmp_path / "s.db", max_bytes=10_000, max_age_s=100, clock=clock)
    first = spool.push("devices/d/telemetry", b"plain")
    clock.t = 510.0
    second = spool.push("devices/d/state", b"kept", qos=0, retain=True)
    assert spool.peek(0) == []
    assert spool.peek(1) == [SpoolEntry(first, "devices/d/telemetry", b"plain", 1, False, 500.0)]
    assert spool.peek(5, after_id=first) == [
        SpoolEntry(second, "devices/d/state", b"kept", 0, True, 510.0)
    ]
    clock.t = 530.0
    assert spool.stats().oldest_age_s == 30.0
    spool.ack(first)
    spool.ack(second)
    assert spool.stats().oldest_age_s == 0.0 and spool.stats().bytes == 0


def test_a_drop_for_room_is_logged_with_its_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=100, max_age_s=1e9)
    for i in range(10):
        spool.push("t", bytes([i]) * 10)
    with caplog.at_level("WARNING", logger="agent.spool"):
        spool.push("t", b"x" * 30)
    assert [r.getMessage() for r in caplog.records] == [
        "spool full or stale: dropped the 3 oldest entries"
    ]


def test_salvage_counts_what_a_readable_damaged_file_still_held_as_dropped(
    tmp_path: Path,
) -> None:
    from agent.spool import _salvage

    fresh, before = tmp_path / "fresh.db", tmp_path / "before.db"
    spool = Spool(fresh, max_bytes=10**7, max_age_s=1e9)
    spool.push("t", b"a")
    spool.push("t", b"b")
    spool.close()
    assert _salvage(fresh) == {"lost": 2, "dropped": 2}  # no drops before: just the queue
    spool = Spool(before, max_bytes=25, max_age_s=1e9)
    for i in range(4):
        spool.push("t", bytes([i]) * 10)  # the third and fourth drop one each
    spool.note_replayed(1)
    spool.close()
    assert _salvage(before) == {"dropped": 2 + 2, "replayed": 1, "lost": 2}


def test_a_spool_directory_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    parent = tmp_path / "a-file"
    parent.write_bytes(b"")
    with pytest.raises(StoreError) as err:
        Spool(parent / "s.db", max_bytes=100, max_age_s=1e9)
    assert str(err.value).startswith(f"cannot create the spool directory {parent}: [Errno ")


def test_a_spool_opened_in_one_thread_is_used_from_another(tmp_path: Path) -> None:
    """The agent's uplink thread pushes to the spool its main thread opened."""
    import threading

    spool = Spool(tmp_path / "s.db", max_bytes=10**6, max_age_s=1e9)
    ids: list[int] = []
    worker = threading.Thread(target=lambda: ids.append(spool.push("t", b"from a thread")))
    worker.start()
    worker.join()
    assert [(e.id, e.payload) for e in spool.peek(10)] == [(ids[0], b"from a thread")]
    assert spool.corrupt_recoveries == 0


def test_an_error_that_is_not_damage_is_a_store_error_and_keeps_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    spool = Spool(path, max_bytes=10**6, max_age_s=1e9)
    spool.push("t", b"kept")

    def full(_db: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with pytest.raises(StoreError) as err:
        spool._write(full)
    assert str(err.value) == f"spool {path}: database or disk is full"
    assert [e.payload for e in spool.peek(10)] == [b"kept"] and spool.corrupt_recoveries == 0
    spool.close()

    def locked(self: Spool) -> sqlite3.Connection:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(Spool, "_connect", locked)
    with pytest.raises(StoreError) as err:
        Spool(path, max_bytes=10**6, max_age_s=1e9)
    assert str(err.value) == f"cannot open the spool {path}: database is locked"
    assert not list(tmp_path.glob("s.db.corrupt-*"))


def test_a_failed_write_is_rolled_back_and_the_spool_goes_on(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=10**6, max_age_s=1e9)
    spool.push("t", b"one")

    def half_done(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM outbox")
        raise ValueError("the caller failed midway")

    with pytest.raises(ValueError, match="midway"):
        spool._write(half_done)
    assert [e.payload for e in spool.peek(10)] == [b"one"]
    spool.push("t", b"two")
    assert (spool.stats().depth, spool.stats().bytes) == (2, 6)


def test_pushes_are_synced_fully_and_acks_normally(tmp_path: Path) -> None:
    """A queued entry must survive power loss; a lost ack only means one resend."""
    spool = Spool(tmp_path / "s.db", max_bytes=10**6, max_age_s=1e9)

    def synchronous() -> int:
        return int(spool._db.execute("PRAGMA synchronous").fetchone()[0])

    entry = spool.push("t", b"a")
    assert synchronous() == 2  # FULL
    spool.ack(entry)
    assert synchronous() == 1  # NORMAL
    spool.note_replayed(1)
    assert synchronous() == 1
    spool.push("t", b"b")
    assert synchronous() == 2


def test_damage_quick_check_reports_is_logged_and_the_entries_it_held_count_as_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong freelist count: every table still reads, but quick_check reports it."""
    path, clock = tmp_path / "s.db", Clock(77.0)
    spool = Spool(path, max_bytes=10**6, max_age_s=1e9, clock=clock)
    for _ in range(5):
        spool.push("t", b"x" * 100)
    spool.close()
    header = bytearray(path.read_bytes())
    header[36:40] = (5).to_bytes(4, "big")  # the header's freelist page count
    path.write_bytes(bytes(header))
    with caplog.at_level("ERROR", logger="agent.spool"):
        fresh = Spool(path, max_bytes=10**6, max_age_s=1e9, clock=clock)
    assert [r.getMessage() for r in caplog.records] == [
        f"spool {path} was damaged (PRAGMA quick_check found damage); moved to"
        f" {tmp_path / 's.db.corrupt-77'}, starting empty (5 queued entries lost)"
    ]
    stats = fresh.stats()
    assert (stats.depth, stats.dropped_total, fresh.corrupt_recoveries) == (0, 5, 1)
