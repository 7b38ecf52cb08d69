"""Schema version 7: every table as ``store/schema.py`` defines it.

Versions 1-6 were sqlite-utils steps (``store/legacy_sqlite.py``); a SQLite data
directory at version 7 is stamped with this revision without running it.  On
PostgreSQL it also creates the default partitions of the time-partitioned
tables and the trigger that keeps the audit log append-only.  A later revision
that changes a table does it with ``op`` calls; this one then keeps a frozen copy
of the changed table.
"""

from __future__ import annotations

from alembic import op

from fleet_server.store import schema

revision = "0007"
down_revision = None
branch_labels = None
depends_on = None

_AUDIT_APPEND_ONLY_PG = (
    "CREATE FUNCTION fleet_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'the audit log is append-only' "
    "USING ERRCODE = 'insufficient_privilege'; END $$",
    "CREATE TRIGGER audit_no_update_delete BEFORE UPDATE OR DELETE ON audit "
    "FOR EACH ROW EXECUTE FUNCTION fleet_audit_append_only()",
    "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
    "FOR EACH STATEMENT EXECUTE FUNCTION fleet_audit_append_only()",
)

_AUDIT_APPEND_ONLY_SQLITE = (
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
)


def upgrade() -> None:
    bind = op.get_bind()
    later = {"telemetry_keys", "login_failures"}  # made by revisions 0008, 0009
    schema.metadata.create_all(
        bind, tables=[t for t in schema.metadata.sorted_tables if t.name not in later]
    )
    if bind.dialect.name == "postgresql":
        for table in schema.PARTITIONED:
            op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
        triggers: tuple[str, ...] = _AUDIT_APPEND_ONLY_PG
    else:
        triggers = _AUDIT_APPEND_ONLY_SQLITE
    for sql in triggers:
        op.execute(sql)
