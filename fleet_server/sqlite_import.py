"""``fleet-server migrate --from-sqlite``: move an embedded install's data to PostgreSQL.

Both schemas come from the same table definitions (:mod:`fleet_server.store.schema`),
so the copy is table by table in foreign-key order, in batches, in one PostgreSQL
transaction: an import that fails leaves the target as empty as it found it.  The
source is first brought to this release's schema (the SQLite store migrates itself
when opened); the target must be empty, so an import never merges two fleets.
Afterwards every table's row count is compared, and the identity sequences are
moved past the copied ids so new rows do not collide.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from edgefleet_contract.errors import ConfigError

from .store import is_postgres, open_store
from .store.migrations import upgrade_url
from .store.pgconnect import engine_url
from .store.schema import metadata

BATCH = 2000


def import_sqlite(source: Path, target_url: str) -> dict[str, int]:
    """Copy every table of the SQLite database ``source`` into ``target_url``; returns
    the row count of each table (equal on both sides, or this raises)."""
    if not is_postgres(target_url):
        raise ConfigError(
            "migrate --from-sqlite copies into PostgreSQL: set [database] url "
            "(or FLEET_DATABASE__URL) to a postgresql:// DSN"
        )
    if not source.is_file():
        raise ConfigError(f"{source} is not a SQLite database file (--from-sqlite)")
    open_store(str(source)).close()  # bring the source to this release's schema
    upgrade_url(target_url)
    src = sa.create_engine(f"sqlite:///{source}", poolclass=sa.pool.NullPool)
    dst = sa.create_engine(engine_url(target_url), poolclass=sa.pool.NullPool)
    try:
        with src.connect() as read, dst.begin() as write:
            _refuse_non_empty(write)
            counts = {t.name: _copy(t, read, write) for t in metadata.sorted_tables}
            _advance_sequences(write)
            landed = _counts(write)
        if landed != counts:
            raise ConfigError(f"row counts differ after the import: {counts} vs {landed}")
        return counts
    finally:
        src.dispose()
        dst.dispose()


def _refuse_non_empty(conn: sa.Connection) -> None:
    full = [name for name, n in _counts(conn).items() if n]
    if full:
        raise ConfigError(
            f"the PostgreSQL database already holds data ({', '.join(full)}); "
            "import into an empty database"
        )


def _counts(conn: sa.Connection) -> dict[str, int]:
    return {
        t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
        for t in metadata.sorted_tables
    }


def _copy(table: sa.Table, read: sa.Connection, write: sa.Connection) -> int:
    copied = 0
    result = read.execution_options(stream_results=True).execute(sa.select(table))
    while rows := result.mappings().fetchmany(BATCH):
        write.execute(sa.insert(table), [dict(r) for r in rows])
        copied += len(rows)
    return copied


def _advance_sequences(conn: sa.Connection) -> None:
    for table in metadata.sorted_tables:
        for column in table.primary_key.columns:
            if column.autoincrement is not True:
                continue
            conn.execute(
                sa.text(
                    "SELECT setval(pg_get_serial_sequence(:t, :c), "
                    f"GREATEST((SELECT max({column.name}) FROM {table.name}), 1))"
                ),
                {"t": table.name, "c": column.name},
            )
