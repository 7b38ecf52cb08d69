"""``fleet-server migrate --from-sqlite``: an embedded install's data dir moves to a real
PostgreSQL database with every table's row count equal, and the result is a working
store; a second import, or one into SQLite, is refused with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from edgefleet_contract.messages import Reading, Telemetry
from fleet_server.config import ServerSettings
from fleet_server.server import initialize
from fleet_server.store import open_store
from fleet_server.store.base import AuditEntry
from fleet_server.store.pgconnect import engine_url
from fleet_server.store.schema import metadata

from .harness import ADMIN_PASSWORD

ROOT = Path(__file__).resolve().parent.parent


def fleet_server(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from fleet_server.cli import main; main()", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
            for t in metadata.sorted_tables
        }


def embedded_fleet(data_dir: Path) -> Path:
    """A SQLite data dir with devices, telemetry, users and audit entries."""
    initialize(ServerSettings(data_dir=data_dir), admin_password=ADMIN_PASSWORD)
    db = data_dir / "fleet.db"
    store = open_store(str(db))
    now = time.time()
    try:
        for i in range(5):
            store.create_device(f"imp-{i}", name=f"imp-{i}", tags={"site": "a"}, now=now)
        batches = [
            Telemetry(
                device_id=f"imp-{i % 5}", batch_id=f"b-{i}", seq=i, ts=now - i, window_s=1,
                readings=[Reading(ts=now - i, name="temp", value=float(i))],
            )
            for i in range(40)
        ]  # fmt: skip
        assert store.insert_telemetry(batches, received_at=now) == 40
        for i in range(3):
            store.append_audit(AuditEntry(now, "admin", "admin", "test", f"t{i}", "::1", "ok"))
    finally:
        store.close()
    return db


def test_an_embedded_data_dir_moves_to_postgresql_with_equal_counts(
    tmp_path: Path, pg_dsn: str
) -> None:
    db = embedded_fleet(tmp_path / "fleet")
    env = {"FLEET_DATABASE__URL": pg_dsn}
    done = fleet_server("migrate", "--from-sqlite", str(db), "--data-dir", str(tmp_path / "x"),
                        env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "copied" in done.stdout
    source = counts(sa.create_engine(f"sqlite:///{db}"))
    target = counts(sa.create_engine(engine_url(pg_dsn)))
    assert target == source
    assert source["devices"] == 5 and source["telemetry"] == 40 and source["users"] == 1
    assert source["audit"] >= 3
    # The copy is a working store: devices read back, new audit rows get fresh ids.
    store = open_store(pg_dsn)
    try:
        assert store.get_device("imp-3").tags == {"site": "a"}
        store.append_audit(AuditEntry(time.time(), "admin", "admin", "after", "x", "::1", "ok"))
    finally:
        store.close()
    # A second import would merge two fleets: refused, nothing written.
    again = fleet_server("migrate", "--from-sqlite", str(db), env=env)
    assert again.returncode == 2, again.stderr
    assert "already holds data" in again.stderr
    assert "Traceback" not in again.stderr
    assert counts(sa.create_engine(engine_url(pg_dsn)))["audit"] == source["audit"] + 1


def test_importing_into_sqlite_or_from_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    to_sqlite = fleet_server("migrate", "--from-sqlite", str(tmp_path / "a.db"),
                             "--data-dir", str(tmp_path / "d"), env={})  # fmt: skip
    assert to_sqlite.returncode == 2
    assert "postgresql://" in to_sqlite.stderr
    missing = fleet_server("migrate", "--from-sqlite", str(tmp_path / "none.db"),
                           env={"FLEET_DATABASE__URL": "postgresql://u@127.0.0.1:1/x"})  # fmt: skip
    assert missing.returncode == 2
    assert "is not a SQLite database file" in missing.stderr
