"""Schema version 7: every table as ``store/schema.py`` defines it.

Versions 1-6 were sqlite-utils steps (``store/legacy_sqlite.py``); a SQLite data
directory at version 7 is stamped with this revision without running it.  On
PostgreSQL it also creates the default partitions of the time-partitioned
tables, the trigger that keeps the audit log append-only, and the version
comparison the selectors use.  A later revision that changes a table does it
with ``op`` calls; this one then keeps a frozen copy of the changed table.
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

# Versions compare part by part: numeric parts as numbers, below any text part,
# text parts by code point; a prefix sorts first (fleet_server.selector.version_key).
_VERSION_CMP_PG = """
CREATE FUNCTION fleet_version_cmp(a text, b text) RETURNS int
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    pa text[] := array_remove(regexp_split_to_array(a, '[.+-]'), '');
    pb text[] := array_remove(regexp_split_to_array(b, '[.+-]'), '');
    na int := coalesce(array_length(pa, 1), 0);
    nb int := coalesce(array_length(pb, 1), 0);
    x text;
    y text;
BEGIN
    IF a IS NULL OR b IS NULL THEN
        RETURN NULL;
    END IF;
    FOR i IN 1 .. least(na, nb) LOOP
        x := pa[i];
        y := pb[i];
        IF x ~ '^[0-9]+$' AND y ~ '^[0-9]+$' THEN
            IF x::numeric <> y::numeric THEN
                RETURN sign(x::numeric - y::numeric)::int;
            END IF;
        ELSIF x ~ '^[0-9]+$' THEN
            RETURN -1;
        ELSIF y ~ '^[0-9]+$' THEN
            RETURN 1;
        ELSIF x <> y THEN
            RETURN CASE WHEN x COLLATE "C" < y COLLATE "C" THEN -1 ELSE 1 END;
        END IF;
    END LOOP;
    RETURN sign(na - nb)::int;
END $$;
"""

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
        op.execute(_VERSION_CMP_PG)
    else:
        triggers = _AUDIT_APPEND_ONLY_SQLITE
    for sql in triggers:
        op.execute(sql)
