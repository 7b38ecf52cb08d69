"""Persistence behind one interface (:class:`Store`); SQLite today."""

from __future__ import annotations

from pathlib import Path

from .base import Store
from .sqlite import SqliteStore


def open_store(path: Path | str) -> Store:
    """Open (creating and migrating as needed) the store at ``path``."""
    return SqliteStore(path)


__all__ = ["SqliteStore", "Store", "open_store"]
