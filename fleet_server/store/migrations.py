"""Schema versions: Alembic revisions under ``store/alembic/versions``, one per version.

Revision ids are the version numbers (``0007`` is version 7), so
``schema_version()`` stays an integer.  A SQLite data directory from before
Alembic (a ``schema_version`` table, versions 1-7 by sqlite-utils) is first
brought to version 7 by its old steps (``legacy_sqlite.py``) and stamped, then
upgraded like any other.  A database at a version this code does not know is
refused with both versions: running older code on it could corrupt it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from edgefleet_contract.errors import ConfigError

BASELINE = "0007"
_HERE = Path(__file__).parent / "alembic"


class SchemaTooNew(ConfigError):
    """The database was written by a newer fleet-server."""


def _config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> int:
    """The newest schema version this code knows."""
    return int(ScriptDirectory.from_config(_config()).get_current_head() or 0)


def current(connection: sa.Connection) -> int:
    """The version ``connection``'s database is at (0: empty)."""
    rev = MigrationContext.configure(connection).get_current_revision()
    return int(rev) if rev else 0


def refuse_newer(version: int, where: str) -> None:
    newest = head()
    if version > newest:
        raise SchemaTooNew(
            f"{where} is at schema version {version}, newer than this fleet-server knows "
            f"(up to {newest}); run the fleet-server release that wrote it, or a newer one"
        )


def _adopt_legacy_sqlite(path: Path) -> None:
    """Bring a pre-Alembic SQLite file to version 7 by its own steps, then stamp it."""
    import sqlite_utils

    from . import legacy_sqlite

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "schema_version" not in tables or "alembic_version" in tables:
            return
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        refuse_newer(int(row[0] or 0), str(path))
        legacy_sqlite.migrate(sqlite_utils.Database(conn))
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES (?)", (BASELINE,))
    finally:
        conn.close()


def upgrade(engine: sa.Engine, *, where: str) -> tuple[int, int]:
    """Bring the database to the newest version: (the version before, the one after).
    ``where`` names the database in errors (a path, or host and database)."""
    if engine.dialect.name == "sqlite" and engine.url.database:
        _adopt_legacy_sqlite(Path(engine.url.database))
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # Two replicas starting at once: one migrates, the other waits, then
                # finds nothing to do.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7305100)"))
            before = current(conn)
            refuse_newer(before, where)
            command.upgrade(_config(conn), "head")
            return before, current(conn)
    except sa.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0]
        if "permission denied" in reason or "must be owner" in reason:
            raise ConfigError(
                f"cannot migrate {where}: {reason}; the user lacks the right to create or "
                "change tables: run `fleet-server migrate` as the database's owner, or "
                "GRANT CREATE ON SCHEMA public to this user"
            ) from None
        raise ConfigError(f"cannot migrate {where}: {reason}") from None


def upgrade_url(url: str) -> tuple[int, int]:
    """``upgrade`` for a store URL (a SQLite path or a PostgreSQL DSN)."""
    from . import is_postgres, sqlite_path
    from .pgconnect import connect, describe, engine_url

    if is_postgres(url):
        connect(url).close()  # the clear error for a DSN that cannot work
        engine = sa.create_engine(engine_url(url), poolclass=sa.pool.NullPool)
        where = describe(url)
    else:
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.NullPool)
        where = str(path)
    try:
        return upgrade(engine, where=where)
    finally:
        engine.dispose()
