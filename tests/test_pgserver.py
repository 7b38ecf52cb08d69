"""The private PostgreSQL test cluster itself: a fresh database per test, restartable."""

from __future__ import annotations

import psycopg
import pytest

from .pgserver import PgServer


def test_fresh_database_per_test_is_empty_and_writable(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_not_the_system_server(pg_server: PgServer) -> None:
    assert pg_server.port != 5432
    with psycopg.connect(pg_server.dsn()) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None and str(pg_server.data) == row[0]


def test_dropped_database_is_gone(pg_server: PgServer) -> None:
    name = pg_server.create_database()
    with psycopg.connect(pg_server.dsn(name)):
        pass  # positive control: it exists
    pg_server.drop_database(name)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(pg_server.dsn(name))
