"""Connecting to PostgreSQL with errors an operator can act on.

A DSN that does not work fails with one line naming the host, the database and
what is missing (the server, the database, the role, the password, a right),
as a :class:`ConfigError` (``fleet-server`` exits 2 on it), never a traceback.
Passwords belong in ``~/.pgpass`` or ``PGPASSWORD``; they are never echoed.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from edgefleet_contract.errors import ConfigError

CONNECT_TIMEOUT_S = 10


def _info(dsn: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"[database] url is not a valid PostgreSQL DSN: {exc}") from None


def describe(dsn: str) -> str:
    """``database fleet on db.example:5432 as edgefleet``, without the password."""
    info = _info(dsn)
    host = info.get("host") or "localhost (socket)"
    port = info.get("port") or "5432"
    user = info.get("user") or "(default user)"
    return f"database {info.get('dbname') or '(default)'} on {host}:{port} as {user}"


def _why(message: str, info: dict[str, Any]) -> str:
    """What is missing, from libpq's message."""
    db, user = info.get("dbname") or "(default)", info.get("user") or "(default user)"
    checks = [
        (
            "does not exist",
            "database" in message and "role" not in message,
            f"database {db!r} does not exist: create it (createdb -O {user} {db}) or fix the URL",
        ),
        (
            "role",
            "does not exist" in message,
            f"role {user!r} does not exist: create it (createuser {user}) or fix the URL",
        ),
        (
            "password authentication failed",
            True,
            f"the password for {user!r} was refused: check ~/.pgpass or PGPASSWORD",
        ),
        (
            "no password supplied",
            True,
            f"the server wants a password for {user!r}: put it in ~/.pgpass or PGPASSWORD",
        ),
        (
            "permission denied for database",
            True,
            f"{user!r} lacks the CONNECT right: GRANT CONNECT ON DATABASE {db} TO {user}",
        ),
        (
            "CONNECT privilege",
            True,
            f"{user!r} lacks the CONNECT right: GRANT CONNECT ON DATABASE {db} TO {user}",
        ),
        ("pg_hba.conf", True, "the server's pg_hba.conf does not admit this host/user"),
        ("Connection refused", True, "no PostgreSQL server answers there (is it running?)"),
        ("timeout expired", True, "the server did not answer in time (network, firewall?)"),
        ("could not translate host name", True, "the host name does not resolve"),
    ]
    for needle, also, advice in checks:
        if needle in message and also:
            return advice
    return message.strip().splitlines()[-1] if message.strip() else "connection failed"


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection, or a :class:`ConfigError` naming host, database and what is missing."""
    info = _info(dsn)
    try:
        return psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, **kwargs)
    except psycopg.OperationalError as exc:
        raise ConfigError(f"cannot open {describe(dsn)}: {_why(str(exc), info)}") from None


def engine_url(dsn: str) -> str:
    """The DSN for SQLAlchemy's psycopg 3 dialect (Alembic runs on it)."""
    if dsn.startswith("postgres://"):
        dsn = "postgresql://" + dsn[len("postgres://") :]
    if dsn.startswith("postgresql://"):
        return "postgresql+psycopg://" + dsn[len("postgresql://") :]
    raise ConfigError(f"not a postgresql:// URL: {dsn.split('@')[-1]}")


def check_rights(conn: Any, where: str) -> None:
    """Every table readable and writable by this user, or a ConfigError naming the
    tables and the GRANT that fixes it (found at start, not at the first write)."""
    from .schema import metadata

    names = sorted(metadata.tables)
    rows = conn.execute(
        "SELECT t, has_table_privilege(current_user, t, 'SELECT') "
        "AND has_table_privilege(current_user, t, 'INSERT') "
        "AND (t = 'audit' OR has_table_privilege(current_user, t, 'UPDATE')) "
        "FROM unnest(?::text[]) AS t",
        [names],
    ).fetchall()
    missing = [r[0] for r in rows if not r[1]]
    if missing:
        raise ConfigError(
            f"{where}: this user lacks SELECT/INSERT/UPDATE on {', '.join(missing)}: GRANT "
            "SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public (and USAGE ON "
            "ALL SEQUENCES) to it"
        )
