"""The store on both backends (a SQLite file, a PostgreSQL database): migrations,
enrollment atomicity, telemetry, audit."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest

from edgefleet_contract.errors import EnrollmentError, NotFound, StoreError
from edgefleet_contract.messages import (
    BurnIn,
    DesiredState,
    DriftReport,
    DriftTest,
    LatencySummary,
    ModelRef,
    ReportedState,
    Telemetry,
)
from fleet_server.store import Store, open_store
from fleet_server.store.base import ApiToken, AuditEntry, CommandRecord

from .harness import inference_stats, nth_batch, system_stats


def batch(device: str, n: int, ts: float, latency: float = 5.0) -> Telemetry:
    return nth_batch(
        device,
        n,
        ts,
        window_s=10,
        system=system_stats(
            cpu_percent=10.0 * (n % 3), mem_used_bytes=100, mem_total_bytes=200, rss_bytes=50
        ),
        inference=inference_stats(
            errors=1,
            throughput_per_s=1,
            latency=LatencySummary(
                p50_ms=1, p95_ms=latency, p99_ms=latency * 2, max_ms=9, mean_ms=1
            ),
        ),
    )


def test_migrations_are_idempotent_and_wal(tmp_path: Path) -> None:
    open_store(tmp_path / "f.db").close()
    s = open_store(tmp_path / "f.db")
    from fleet_server.store.migrations import head

    assert s.schema_version() == head()
    mode = sqlite3.connect(tmp_path / "f.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_device_lifecycle(store: Store) -> None:
    store.create_device("d1", name="Pump 1", tags={"site": "berlin"}, now=1.0)
    with pytest.raises(StoreError, match="already exists"):
        store.create_device("d1", name="x", tags={}, now=1.0)
    with pytest.raises(NotFound):
        store.get_device("nope")
    d = store.update_device("d1", tags={"site": "paris"}, groups=["canary", "canary"])
    assert d.tags == {"site": "paris"} and d.groups == ("canary",)
    store.set_presence("d1", online=True, ts=5.0)
    store.touch_seen({"d1": 7.0})
    d = store.get_device("d1")
    assert d.online and d.last_seen == 7.0
    state = ReportedState(
        device_id="d1",
        ts=6.0,
        agent_version="0.1.0",
        health="ok",
        model=ModelRef(name="digits", version="1.0.0", sha256="a" * 64, runtime="onnx"),
    )
    store.set_reported("d1", state, 6.0)
    assert store.get_device("d1").reported == state
    assert store.next_desired_version("d1") == 1
    store.set_desired("d1", DesiredState(version=1, config={"interval": 5}))
    with pytest.raises(StoreError, match="not newer"):
        store.set_desired("d1", DesiredState(version=1))
    assert store.get_device("d1").desired == DesiredState(version=1, config={"interval": 5})
    assert store.list_devices(limit=10).total == 1


def test_enrollment_token_rules(store: Store) -> None:
    store.create_device("d1", name="d1", tags={}, now=0)
    store.save_enrollment_token("d1", "h1", expires_at=100)
    with pytest.raises(EnrollmentError, match="expired"):
        store.take_enrollment_token("h1", now=101)
    assert store.take_enrollment_token("h1", now=50) == "d1"
    with pytest.raises(EnrollmentError, match="already used"):
        store.take_enrollment_token("h1", now=51)
    with pytest.raises(EnrollmentError, match="unknown"):
        store.take_enrollment_token("zzz", now=51)
    store.add_certificate("d1", 1234, not_after=999, now=52)
    assert store.get_device("d1").state == "enrolled"
    store.save_enrollment_token("d1", "h2", expires_at=100)
    assert store.revoke_device("d1", now=60) == [1234]
    assert store.revoked_serials() == [(1234, 60.0)]
    assert store.is_revoked("d1")
    store.create_device("d2", name="d2", tags={}, now=0)
    store.save_enrollment_token("d2", "h3", expires_at=100)
    store.revoke_device("d2", now=61)
    with pytest.raises(EnrollmentError):
        store.take_enrollment_token("h3", now=62)


def test_token_race_has_one_winner(store: Store) -> None:
    s = store
    s.create_device("d1", name="d1", tags={}, now=0)
    s.save_enrollment_token("d1", "h", expires_at=100)
    wins: list[str] = []
    losses: list[Exception] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait()
        try:
            wins.append(s.take_enrollment_token("h", now=1))
        except EnrollmentError as exc:
            losses.append(exc)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins == ["d1"] and len(losses) == 7


def test_telemetry_stored_once_and_rolled_up(store: Store) -> None:
    store.create_device("d1", name="d1", tags={}, now=0)
    batches = [batch("d1", i, ts=600.0 + i) for i in range(5)]
    assert store.insert_telemetry(batches, received_at=700) == 5
    assert store.insert_telemetry([*batches[:3], batch("d1", 9, 660.0)], received_at=701) == 1
    raw = store.query_raw("d1", since=0, until=1e9)
    assert [b.batch_id for b in raw] == ["b0", "b1", "b2", "b3", "b4", "b9"]
    rollups = store.query_rollups(["d1"], since=0, until=1e9)
    assert [(r.minute, r.batches) for r in rollups] == [(600.0, 5), (660.0, 1)]
    first = rollups[0]
    assert first.inferences == 50 and first.errors == 5
    assert first.latency_p95_ms == pytest.approx(5.0)
    assert first.cpu_percent == pytest.approx((0 + 10 + 20 + 0 + 10) / 5)
    assert store.prune(10_000, raw_retention_s=5000, rollup_retention_s=9_370) == 7
    assert store.query_raw("d1", since=0, until=1e9) == []


def test_telemetry_repeated_in_one_call_stored_and_rolled_up_once(store: Store) -> None:
    store.create_device("d1", name="d1", tags={}, now=0)
    calls = [batch("d1", 1, 600.0), batch("d1", 2, 610.0), batch("d1", 1, 600.0)]
    assert store.insert_telemetry(calls, received_at=700) == 2
    assert [b.batch_id for b in store.query_raw("d1", since=0, until=1e9)] == ["b1", "b2"]
    rollups = store.query_rollups(["d1"], since=0, until=1e9)
    assert [(r.minute, r.batches, r.errors) for r in rollups] == [(600.0, 2, 2)]


def drifting(n: int, ts: float, *, alert: bool) -> Telemetry:
    report = DriftReport(
        method="chi2",
        samples=100,
        alpha=0.01,
        reference=DriftTest(p_value=0.5, effect=0.1),
        burn_in=BurnIn(rows=10, needed=10),
        alert=alert,
    )
    return batch("d1", n, ts).model_copy(update={"drift": report})


def test_drift_status_only_from_batches_stored_now(store: Store) -> None:
    """A repeat of a stored batch does not rewrite the device's drift status, even in a
    call with new batches."""
    store.create_device("d1", name="d1", tags={}, now=0)
    assert store.insert_telemetry([drifting(1, 600.0, alert=True)], received_at=700) == 1
    again = [drifting(1, 650.0, alert=False), drifting(2, 640.0, alert=True)]
    assert store.insert_telemetry(again, received_at=701) == 1
    rows = store._conn().execute("SELECT ts, alert, alert_since FROM drift_status").fetchall()
    assert [tuple(r) for r in rows] == [(640.0, 1, 600.0)]


def test_telemetry_writes_last_seen_with_its_batches(store: Store) -> None:
    """Ingest's last-seen times go in the telemetry's own transaction: never backwards,
    for a device with no batch in the call too, and also when every batch was a repeat."""
    for device in ("d1", "d2"):
        store.create_device(device, name=device, tags={}, now=0)
    store.touch_seen({"d1": 650.0})
    seen = {"d1": 640.0, "d2": 690.0}
    assert store.insert_telemetry([batch("d1", 1, 600.0)], received_at=700, seen=seen) == 1
    assert store.get_device("d1").last_seen == 650.0
    assert store.get_device("d2").last_seen == 690.0
    again = [batch("d1", 1, 600.0)]
    assert store.insert_telemetry(again, received_at=701, seen={"d1": 695.0}) == 0
    assert store.get_device("d1").last_seen == 695.0
    assert store.get_device("d2").last_seen == 690.0


def test_commands_ack_only_from_their_device(store: Store) -> None:
    store.create_device("d1", name="d1", tags={}, now=0)
    store.add_command(
        CommandRecord(id="c1", device_id="d1", name="ping", args={}, created_at=1, actor="alice")
    )
    store.ack_command("c1", device_id="d2", status="done", detail="forged", ts=2)
    assert store.list_commands("d1")[0].status == "sent"
    store.ack_command("c1", device_id="d1", status="done", detail="pong", ts=2)
    assert store.list_commands("d1")[0].status == "done"


def test_audit_is_append_only(store: Store, store_url: str) -> None:
    store.append_audit(
        AuditEntry(
            ts=1,
            actor="alice",
            role="admin",
            action="create_device",
            target="device_id=d1",
            source_ip="127.0.0.1",
            outcome="ok",
        )
    )
    page = store.list_audit()
    assert page.total == 1 and page.items[0].actor == "alice"
    # Straight at the database, past the store: the database itself refuses.
    if store_url.startswith("postgresql://"):
        with psycopg.connect(store_url, autocommit=True) as pg:
            for sql in (
                "UPDATE audit SET actor = 'mallory'",
                "DELETE FROM audit",
                "TRUNCATE audit",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                    pg.execute(sql)  # type: ignore[arg-type]
            pg.execute("INSERT INTO audit (ts, actor) VALUES (2, 'bob')")  # appending works
    else:
        conn = sqlite3.connect(store_url)
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit SET actor = 'mallory'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit")
    assert [e.actor for e in store.list_audit().items][-1] == "alice"


def test_a_half_read_result_does_not_pin_a_threads_view(store: Store) -> None:
    """A revocation committed by one thread is seen by another thread's next read,
    even while that thread still holds an unfinished result (SQLite would otherwise
    keep the statement's read snapshot for as long as the cursor lives)."""
    store.create_user("pin", role="viewer", password_hash="x", now=1.0)
    for n in range(3):
        store.create_api_token(
            ApiToken(
                id=f"t{n}",
                username="pin",
                name="s",
                token_hash=f"h{n}",
                created_at=1.0,
                expires_at=1e12,
            )
        )
    pending = store._conn().execute("SELECT id FROM api_tokens ORDER BY id")  # type: ignore[attr-defined]
    assert pending.fetchone()[0] == "t0"  # two rows left unread, the result still alive

    writer = threading.Thread(target=store.revoke_api_token, args=("t1", 5.0))
    writer.start()
    writer.join()
    record = store.find_api_token("h1")
    assert record is not None and record.revoked_at == 5.0
    assert [r[0] for r in pending] == ["t1", "t2"]
