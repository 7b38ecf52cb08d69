"""The store's backends beyond the shared suite: selectors in SQL, schema versions,
PostgreSQL's partitions, rights, bad DSNs and restarts.  Real SQLite files and a real
PostgreSQL cluster (the session's private one, or a private one for a restart)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import sqlite_utils

from edgefleet_contract.errors import ConfigError, EnrollmentError
from edgefleet_contract.messages import FirmwareRef, ModelRef, ReportedState, Telemetry
from fleet_server.selector import parse
from fleet_server.store import Store, open_store
from fleet_server.store.migrations import SchemaTooNew, head
from fleet_server.store.partitions import DAY

from .harness import free_port, system_stats
from .pgserver import PgServer

SELECTORS = [
    "all",
    "online",
    "offline",
    "tag:site",
    "tag:site=berlin",
    "tag:site!=berlin",
    "not tag:site=berlin",
    "group:canary",
    "not group:canary",
    "id:pump-*",
    "id:pump-?1",
    "id:*[0-4]",
    "id:*[!0-4]",
    "model:digits",
    "model:digits@1.10.0",
    "model:digits<1.10",
    "model:digits>=1.9.2",
    "not model:digits<1.10",
    "firmware:>=2.0",
    "firmware:<2.0.0-rc1",
    "agent:!=0.3",
    "hardware:rpi4",
    "health:degraded",
    "not health:degraded",
    "state:enrolled",
    "(group:canary or id:pump-1*) and not health:degraded",
    "tag:site=berlin and model:digits<2.0 and online",
    "not (tag:site or group:canary)",
    'tag:we"ird.k$[0]=v',
    'tag:we"ird.k$[0]',
    'tag:we"ird.k$[0]!=v',
]


def _fleet(store: Store) -> None:
    """Thirty devices whose facts vary enough for every selector above to split them."""
    for i in range(30):
        did = f"pump-{i}" if i % 3 else f"fan-{i}"
        tags = {"site": ["berlin", "paris"][i % 2]} if i % 5 else {}
        if i % 8 == 3:
            tags['we"ird.k$[0]'] = "v"  # a key no JSON path could name unquoted
        store.create_device(did, name=did, tags=tags, now=1.0)
        if i % 4 == 0:
            store.update_device(did, groups=["canary"])
        if i % 7:
            version = ["1.9.2", "1.10.0", "2.0", "1.9"][i % 4]
            store.set_reported(
                did,
                ReportedState(
                    device_id=did,
                    ts=2.0,
                    agent_version=["0.3", "0.3.0", "0.4"][i % 3],
                    hardware=["rpi4", "jetson"][i % 2],
                    health=["ok", "degraded"][i % 3 == 1],
                    model=ModelRef(
                        name="digits" if i % 6 else "kws",
                        version=version,
                        sha256="a" * 64,
                        runtime="onnx",
                    ),
                    firmware=FirmwareRef(version=["2.0.0-rc1", "2.0.0", "1.4"][i % 3]),
                ),
                ts=2.0,
            )
        if i % 2:
            store.set_presence(did, online=True, ts=3.0)
        if i % 9 == 0:
            store.add_certificate(did, 1000 + i, not_after=9e9, now=4.0)


def test_selectors_in_sql_choose_what_matches_chooses(store: Store) -> None:
    _fleet(store)
    everyone = [store.get_device(d.id) for d in store.all_devices()]
    assert len(everyone) == 30
    splits = 0
    for text in SELECTORS:
        sel = parse(text)
        expected = sorted(d.id for d in everyone if sel.matches(d))
        page = store.list_devices(where=sel, limit=1000)
        assert sorted(d.id for d in page.items) == expected, text
        assert page.total == len(expected), text
        assert [d.id for d in store.all_devices(where=sel)] == expected, text
        splits += 0 < len(expected) < 30
    assert splits >= len(SELECTORS) - 2  # the fleet really splits (not all-or-nothing)
    paged = store.list_devices(where=parse("online"), offset=5, limit=5)
    assert paged.total == 15 and len(paged.items) == 5


def test_a_database_newer_than_the_code_is_refused(store_url: str) -> None:
    open_store(store_url).close()
    if store_url.startswith("postgresql://"):
        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '9999'")
    else:
        with sqlite3.connect(store_url) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaTooNew, match=rf"schema version 9999.*up to {head()}"):
        open_store(store_url)


def test_a_pre_alembic_sqlite_dir_upgrades_and_keeps_its_data(tmp_path: Path) -> None:
    from fleet_server.store import legacy_sqlite

    path = tmp_path / "fleet.db"
    db = sqlite_utils.Database(path)
    legacy_sqlite.migrate(db)
    db.execute(
        "INSERT INTO devices (id, name, tags, groups, state, created_at, online, "
        "desired_version) VALUES ('old-1', 'old', '{\"site\": \"x\"}', '[]', 'pending', 1, 0, 0)"
    )
    db.conn.commit()
    db.close()
    store = open_store(path)
    assert store.schema_version() == head()
    assert store.get_device("old-1").tags == {"site": "x"}
    assert store.list_devices(where=parse("tag:site=x")).total == 1
    store.close()
    with sqlite3.connect(path) as conn:  # a legacy version above 7 is refused too
        conn.execute("DELETE FROM alembic_version")
        conn.execute("DROP TABLE alembic_version")
        conn.execute("INSERT INTO schema_version VALUES (42)")
    with pytest.raises(SchemaTooNew, match="42"):
        open_store(path)


def _batch(device: str, n: int, ts: float) -> Telemetry:
    return Telemetry(device_id=device, batch_id=f"b{n}", seq=n, ts=ts, window_s=10)


def test_a_batch_id_is_stored_once_whatever_its_ts(store: Store) -> None:
    store.create_device("k1", name="k1", tags={}, now=1.0)
    now = time.time()
    assert store.insert_telemetry([_batch("k1", 1, now)], received_at=now) == 1
    again = [_batch("k1", 1, now + 5), _batch("k1", 2, now - 3 * DAY), _batch("k1", 2, now)]
    assert store.insert_telemetry(again, received_at=now + 6) == 1  # b2 once, b1 not again
    assert sorted(b.batch_id for b in store.query_raw("k1", since=0, until=1e12)) == ["b1", "b2"]
    assert [r.batches for r in store.query_rollups(["k1"], since=0, until=1e12)] == [1, 1]


def _partitions(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'telemetry'"
        ).fetchall()
    return {r[0] for r in rows}


def test_postgres_partitions_by_day_and_retention_drops_them(pg_dsn: str) -> None:
    store = open_store(pg_dsn)
    now = time.time()
    today = int(now // DAY)
    assert {f"telemetry_d{today}", f"telemetry_d{today + 1}", "telemetry_default"} <= (
        _partitions(pg_dsn)
    )
    store.create_device("p1", name="p1", tags={}, now=now)
    batches = [_batch("p1", i, now + i) for i in range(5)] + [_batch("p1", 9, 1000.0)]
    assert store.insert_telemetry(batches, received_at=now) == 6
    assert store.insert_telemetry(batches, received_at=now + 1) == 0  # stored once
    with psycopg.connect(pg_dsn) as conn:
        in_day = conn.execute(f"SELECT COUNT(*) FROM telemetry_d{today}").fetchone()
        in_default = conn.execute("SELECT COUNT(*) FROM telemetry_default").fetchone()
    assert (in_day, in_default) == ((5,), (1,))
    # Retention a day past tomorrow: today's partition goes whole, the old row by DELETE.
    later = (today + 2) * DAY + 10
    removed = store.prune(later, raw_retention_s=DAY, rollup_retention_s=DAY)
    assert removed >= 6 + 1  # 6 raw rows, at least the rollup minutes of today
    assert f"telemetry_d{today}" not in _partitions(pg_dsn)
    assert f"telemetry_d{today + 1}" in _partitions(pg_dsn)  # not yet expired
    assert store.query_raw("p1", since=0, until=1e12) == []
    assert store.query_rollups(["p1"], since=0, until=1e12) == []
    store.close()


def test_postgres_refuses_a_user_without_rights_by_name(pg_server: PgServer, pg_dsn: str) -> None:
    open_store(pg_dsn).close()  # the schema, made by its owner
    db = pg_dsn.rsplit("/", 1)[1]
    pg_server.admin_sql("DROP ROLE IF EXISTS reader")
    pg_server.admin_sql("CREATE ROLE reader LOGIN")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader")
    reader = pg_server.dsn(db, user="reader")
    with pytest.raises(ConfigError, match=rf"database {db} on 127.0.0.1:\d+ as reader.*lacks"):
        open_store(reader)
    # Positive control: with the rights granted, the same user opens it.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO reader")
        conn.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO reader")
    open_store(reader).close()
    # A fresh database this user may not create tables in: named, not a traceback.
    fresh = pg_server.create_database()
    try:
        with pytest.raises(ConfigError, match=rf"{fresh}.*as reader.*lacks the right"):
            open_store(pg_server.dsn(fresh, user="reader"))
    finally:
        pg_server.drop_database(fresh)


def _fleet_server(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "fleet-server"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("nothing-listens", "no PostgreSQL server answers there"),
        ("no-such-db", "database 'nosuchdb' does not exist"),
        ("no-such-role", "role 'ghost' does not exist"),
    ],
)
def test_a_dsn_that_cannot_work_is_one_line_and_exit_2(
    pg_server: PgServer, tmp_path: Path, where: str, says: str
) -> None:
    dsn = {
        "nothing-listens": f"postgresql://postgres@127.0.0.1:{free_port()}/fleet",
        "no-such-db": pg_server.dsn("nosuchdb"),
        "no-such-role": pg_server.dsn("postgres", user="ghost"),
    }[where]
    res = _fleet_server(
        "migrate", "--data-dir", str(tmp_path / "d"), env={"FLEET_DATABASE__URL": dsn}
    )
    assert res.returncode == 2, res.stderr
    assert says in res.stderr and "127.0.0.1:" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_migrate_and_init_on_an_empty_postgres_database(pg_dsn: str, tmp_path: Path) -> None:
    env = {"FLEET_DATABASE__URL": pg_dsn}
    data = str(tmp_path / "fleet")
    first = _fleet_server("migrate", "--data-dir", data, env=env)
    assert first.returncode == 0, first.stderr
    assert f"from schema version 0 to {head()}" in first.stdout
    again = _fleet_server("migrate", "--data-dir", data, env=env)
    assert f"already at schema version {head()}" in again.stdout
    init = _fleet_server("init", "--data-dir", data, env=env)
    assert init.returncode == 0, init.stderr
    assert not (tmp_path / "fleet" / "fleet.db").exists()  # the store is in PostgreSQL
    store = open_store(pg_dsn)
    assert [u.username for u in store.list_users()] == ["admin"]
    store.close()


def test_postgres_restarted_under_the_store_reconnects() -> None:
    server = PgServer().start()  # its own cluster: this test restarts it
    try:
        server.create_database("fleet")
        store = open_store(server.dsn("fleet"))
        store.create_device("r1", name="r1", tags={}, now=1.0)
        store.save_enrollment_token("r1", "h", expires_at=9e9)
        server.restart()
        # A read outside a transaction finds the connection dropped and reconnects.
        assert store.get_device("r1").name == "r1"
        server.restart()
        # A transaction's first statement (BEGIN) does the same: nothing was lost yet.
        assert store.insert_telemetry([_batch("r1", 1, time.time())], received_at=time.time())
        assert store.take_enrollment_token("h", now=2.0) == "r1"
        with pytest.raises(EnrollmentError, match="already used"):
            store.take_enrollment_token("h", now=3.0)
        store.close()
    finally:
        server.destroy()


def test_the_revisions_build_exactly_the_tables_schema_py_defines(store_url: str) -> None:
    """An edit to store/schema.py without a revision (or the reverse) fails here."""
    import sqlalchemy as sa
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from fleet_server.store import schema
    from fleet_server.store.pgconnect import engine_url

    open_store(store_url).close()
    pg = store_url.startswith("postgresql://")
    engine = sa.create_engine(engine_url(store_url) if pg else f"sqlite:///{store_url}")
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"include_name": _ours})
            diff = compare_metadata(ctx, schema.metadata)
    finally:
        engine.dispose()
    assert diff == []


def _ours(name: str | None, kind: str, parents: dict[str, str | None]) -> bool:
    """Leave out PostgreSQL's day and default partitions (tables made at run time, by
    design not in the metadata) and their indexes."""
    from fleet_server.store import schema

    table = name if kind == "table" else parents.get("table_name")
    return table is None or table in schema.metadata.tables or table == "alembic_version"


def test_every_table_group_round_trips(store: Store) -> None:
    """Training, rollouts, artifacts, update history and the console summary, on both."""
    from edgefleet_contract.messages import LearningStats, UpdateReport
    from fleet_server.store.base import Artifact, RolloutEvent, RolloutRow
    from fleet_server.store.training import RoundRecord

    store.create_device("t1", name="t1", tags={"site": "x"}, now=1.0)
    system = system_stats("battery")
    t = Telemetry(
        device_id="t1",
        batch_id="l1",
        seq=1,
        ts=time.time(),
        window_s=1,
        system=system,
        learning=LearningStats(labelled_samples=7),
    )
    store.insert_telemetry([t], received_at=time.time())
    (minute,) = store.aggregate_rollups(["t1"], since=0, until=1e12)
    assert (minute.device_id, minute.batches, minute.readings) == ("1", 1, 0)
    assert type(minute.batches) is int and type(minute.spool_dropped) is int  # not Decimal
    assert minute.cpu_percent == 1.0
    stats, power = store.learning_facts(["t1"])["t1"]
    assert stats is not None and stats.labelled_samples == 7 and power == "battery"

    store.create_training_run("run-1", {"model": "m"}, actor="alice", now=1.0)
    record = RoundRecord("run-1", 1, 0.5, 0.9, ["t1"], {}, {}, 10, 20, 1.5, 2.0)
    store.complete_round(record, b"w1", b"s1")
    store.complete_round(RoundRecord("run-1", 2, 0.4, 0.95, ["t1"], {}, {}, 1, 2, 1, 3.0), b"w2")
    store.complete_round(RoundRecord("run-1", 2, 0.3, 0.96, ["t1"], {}, {}, 1, 2, 1, 3.0), b"w3")
    assert store.latest_checkpoint("run-1") == (2, b"w3")  # a round saved again replaces
    assert [r.loss for r in store.list_rounds("run-1")] == [0.5, 0.3]
    store.set_training_status("run-1", "completed", now=4.0, result={"ok": True})
    assert store.get_training_run("run-1").result == {"ok": True}

    row = RolloutRow("ro-1", "running", "m@1", 1.0, "alice", 1.0, {"p": 1}, {"s": 1})
    events = [RolloutEvent(1.0, "created", "x"), RolloutEvent(2.0, "wave", "y", "t1")]
    store.save_rollout(
        row, devices=[{"device_id": "t1", "wave": 0, "status": "sent"}], events=events, create=True
    )
    assert [e.kind for e in store.rollout_events("ro-1", limit=1)] == ["wave"]
    assert store.rollout_devices("ro-1")[0]["status"] == "sent"
    assert [r.id for r in store.list_rollouts(statuses=["running"])] == ["ro-1"]

    art = Artifact(
        0,
        "model",
        "m",
        "1.0",
        "onnx-int8",
        "onnx",
        ("rpi4",),
        "a" * 64,
        10,
        "m.efpkg",
        "models/m/1.0/m.efpkg",
        1.0,
        "alice",
    )
    first = store.add_artifact(art)
    assert store.add_artifact(art).id == first.id  # the same bytes again: the same row
    assert store.find_artifacts(kind="model").total == 1 and store.find_artifacts().total == 1

    update = UpdateReport(
        desired_version=1, kind="model", target="m@1.0", phase="failed", error="boom", ts=5.0
    )
    store.set_reported(
        "t1", ReportedState(device_id="t1", ts=5.0, agent_version="1", update=update), 5.0
    )
    assert [e.phase for e in store.list_update_events("t1")] == ["failed"]
    summary = store.fleet_summary(now=time.time(), window_s=900, drift_threshold=0.25, silent_s=300)
    assert summary.total == 1 and summary.alerts["failed_updates"].items[0].device_id == "t1"
    assert "boom" in summary.alerts["failed_updates"].items[0].detail
    assert [b.key for b in summary.by_tag] == ["site=x"]


def test_placeholders_become_psycopgs_outside_literals_only() -> None:
    from fleet_server.store._conn import glob_regex, pg_sql

    assert pg_sql("SELECT ? , '?%' , x::jsonb, :name, 50%") == (
        "SELECT %s , '?%%' , x::jsonb, %(name)s, 50%%"
    )
    assert glob_regex("pump-[!0-4]?.*") == r"^pump\-[^0-4].\..*$"
