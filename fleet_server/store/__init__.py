"""Persistence behind one interface (:class:`Store`): SQLite (embedded) or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from .base import Store
from .sqlite import SqliteStore


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def sqlite_path(url: str) -> Path:
    """The file a SQLite ``url`` (a path, or ``sqlite:///path``) names."""
    return Path(url[len("sqlite:///") :] if url.startswith("sqlite:///") else url)


def open_store(url: Path | str) -> Store:
    """Open (creating and migrating as needed) the store at ``url``: a SQLite path,
    ``sqlite:///path`` or a ``postgresql://`` DSN."""
    text = str(url)
    if is_postgres(text):
        from .postgres import PgStore

        return PgStore(text)
    return SqliteStore(sqlite_path(text))


def database_exists(url: str) -> bool:
    """Whether ``url`` names a store that was created (PostgreSQL: always assumed;
    opening it migrates an empty database)."""
    return is_postgres(url) or sqlite_path(url).exists()


__all__ = ["SqliteStore", "Store", "database_exists", "is_postgres", "open_store"]
