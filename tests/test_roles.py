"""``--role``: what each role runs, and a split role refused on SQLite with the fix named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet_contract.errors import ConfigError
from fleet_server.lease import LocalLease, PgLease
from fleet_server.roles import PARTS, ROLES, check_role, lease_factory

ROOT = Path(__file__).resolve().parent.parent


def test_every_part_runs_somewhere_and_all_runs_everything() -> None:
    assert set(ROLES) == set(PARTS) == {"all", "api", "ingest", "worker"}
    split = [PARTS[r] for r in ("api", "ingest", "worker")]
    for part in ("api", "ingest", "singletons"):
        assert sum(getattr(p, part) for p in split) == 1  # exactly one split role has it
        assert getattr(PARTS["all"], part)


def test_split_roles_need_postgresql() -> None:
    assert check_role("all", None) == PARTS["all"]  # positive: the embedded default
    assert check_role("worker", "postgresql://u@db/fleet") == PARTS["worker"]
    with pytest.raises(ConfigError, match="needs a PostgreSQL database"):
        check_role("api", None)
    with pytest.raises(ConfigError, match="unknown role"):
        check_role("broker", "postgresql://u@db/fleet")


def test_leases_follow_the_database() -> None:
    assert isinstance(lease_factory(None, replica="x")("rollouts"), LocalLease)
    assert isinstance(lease_factory("postgresql://u@db/f", replica="x")("rollouts"), PgLease)


def test_run_with_a_split_role_on_sqlite_exits_2_without_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from fleet_server.cli import main; main()", "run",
         "--role", "ingest", "--data-dir", str(tmp_path / "fleet")],
        cwd=ROOT, env={**os.environ, "FLEET_DATABASE__URL": ""}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--role ingest needs a PostgreSQL database" in done.stderr
    assert "Traceback" not in done.stderr
