"""Connection plumbing shared by the store's parts, and the SQL that differs by dialect.

The store's queries are hand-written SQL in the subset SQLite and PostgreSQL share
(``ON CONFLICT``, ``RETURNING``, ``COALESCE``), with ``?`` (or ``:name``)
placeholders; the PostgreSQL connection rewrites those to psycopg's ``%s``.  What
cannot be shared (JSON paths, ``GREATEST``, substring search, tag pairs) comes from
:class:`Dialect`, one small object per backend, so each query is written once.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Protocol

import psycopg

from edgefleet_contract.errors import NotFound

INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, psycopg.IntegrityError)
"""A unique or foreign key violated, on either backend."""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class DbConn(Protocol):
    """What the store's parts call on a connection (``sqlite3.Connection`` has it)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...
    def executemany(self, sql: str, parameters: Any, /) -> Cursor: ...


class Dialect:
    """SQLite's spelling of the few things the two backends write differently."""

    name = "sqlite"
    exact_versions = True
    """SQL version comparisons order as ``fleet_server.versions`` does (SQLite calls
    that Python code); elsewhere a selector comparing versions is filtered in Python."""

    def greatest(self, a: str, b: str) -> str:
        return f"MAX({a}, {b})"

    def json_text(self, col: str, *path: str) -> str:
        """The value at ``path`` as text (objects and arrays as JSON text)."""
        return f"json_extract({col}, '$.{'.'.join(path)}')"

    def json_num(self, col: str, *path: str) -> str:
        return self.json_text(col, *path)

    def json_flag(self, col: str, *path: str) -> str:
        """A JSON boolean as 1/0 (NULL when absent)."""
        return self.json_text(col, *path)

    def json_key(self, col: str) -> str:
        """The string under a key given as the one placeholder (see :meth:`key_param`);
        by ``json_each``, so any key works (a JSON path would need quoting rules)."""
        return f"(SELECT value FROM json_each({col}) WHERE key = ?)"

    def key_param(self, key: str) -> str:
        return key

    def has_key(self, col: str) -> str:
        return f"EXISTS (SELECT 1 FROM json_each({col}) WHERE key = ?)"

    def array_has(self, col: str) -> str:
        """True when the JSON array text ``col`` holds the one placeholder's string."""
        return f"EXISTS (SELECT 1 FROM json_each({col}) WHERE value = ?)"

    def contains(self, col: str) -> str:
        return f"instr({col}, ?) > 0"

    def pairs(self, col: str, alias: str) -> str:
        """A FROM item over the JSON object ``col``'s (key, value) pairs."""
        return f"json_each({col}) {alias}"

    def glob(self, col: str) -> str:
        """``col`` matches the one placeholder's shell glob (fnmatch rules)."""
        return f"fleet_glob({col}, ?)"

    def glob_param(self, pattern: str) -> str:
        return pattern

    def version_cmp(self, col: str) -> str:
        """-1/0/1 comparing version ``col`` with the placeholder (NULL when ``col`` is)."""
        return f"fleet_version_cmp({col}, ?)"


class PgDialect(Dialect):
    name = "postgresql"
    exact_versions = False  # PEP 440 ordering is Python's (packaging), not SQL's

    def greatest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})"

    def _path(self, path: Sequence[str]) -> str:
        return "'{" + ",".join(path) + "}'"

    def json_text(self, col: str, *path: str) -> str:
        return f"({col}::jsonb #>> {self._path(path)})"

    def json_num(self, col: str, *path: str) -> str:
        return f"({col}::jsonb #> {self._path(path)})::float8"

    def json_flag(self, col: str, *path: str) -> str:
        return f"(({col}::jsonb #> {self._path(path)})::boolean)::int"

    def json_key(self, col: str) -> str:
        return f"({col}::jsonb ->> ?)"

    def has_key(self, col: str) -> str:
        return f"jsonb_exists({col}::jsonb, ?)"

    def array_has(self, col: str) -> str:
        return f"{col}::jsonb @> jsonb_build_array(?::text)"

    def contains(self, col: str) -> str:
        return f"strpos({col}, ?) > 0"

    def pairs(self, col: str, alias: str) -> str:
        return f"jsonb_each_text({col}::jsonb) {alias}"

    def glob(self, col: str) -> str:
        return f"{col} ~ ?"

    def glob_param(self, pattern: str) -> str:
        return glob_regex(pattern)

    def version_cmp(self, col: str) -> str:
        raise NotImplementedError(
            "PostgreSQL cannot order versions as fleet_server.versions does; "
            "filter a versioned selector with Selector.matches (exact_versions is False)"
        )


def glob_regex(pattern: str) -> str:
    """A shell glob as an anchored POSIX regex with :func:`fnmatch.fnmatchcase`'s rules."""
    out, i, n = ["^"], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(r"\[")
                continue
            body = pattern[i:j]
            i = j + 1
            negate = body.startswith("!")
            body = body[1:] if negate else body
            body = body.replace("\\", "\\\\").replace("^", "\\^")
            out.append("[" + ("^" if negate else "") + body + "]")
        else:
            out.append(re.escape(c) if not c.isalnum() else c)
    out.append("$")
    return "".join(out)


_PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|(?<![:\w]):([A-Za-z_]\w*)|\?|%")


@lru_cache(maxsize=1024)
def pg_sql(sql: str) -> str:
    """``?`` -> ``%s``, ``:name`` -> ``%(name)s``, ``%`` -> ``%%`` outside string literals."""

    def swap(m: re.Match[str]) -> str:
        text = m.group(0)
        if text.startswith("'"):
            return text.replace("%", "%%")
        if text == "?":
            return "%s"
        if text == "%":
            return "%%"
        return f"%({m.group(1)})s"

    return _PLACEHOLDER.sub(swap, sql)


class _Closable(Protocol):
    def close(self) -> None: ...


class OwnedConn(Protocol):
    """A backend's connection wrapper, as :meth:`Connections.close` sees it."""

    @property
    def raw(self) -> _Closable: ...


class Connections:
    """Per-thread connections and short write transactions."""

    _local: threading.local
    _lock: threading.Lock
    _all: Sequence[OwnedConn]
    """Every thread's connection, so ``close`` reaches those of other threads too."""
    _version: int
    dialect: Dialect = Dialect()

    def schema_version(self) -> int:
        return self._version

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.raw.close()
            self._all = []
        self._local = threading.local()

    def _conn(self) -> DbConn:
        raise NotImplementedError

    def _advance_seen(self, conn: DbConn, seen: Mapping[str, float]) -> None:
        """Move devices' last-seen times forward inside ``conn``'s transaction (the
        devices' part, ``DeviceTables``; telemetry writes it with its batches)."""
        raise NotImplementedError

    @contextmanager
    def _tx(self) -> Iterator[DbConn]:
        """One write transaction; writers are serialised (SQLite's ``BEGIN IMMEDIATE``)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _ingest_tx(self) -> Iterator[DbConn]:
        """A write whose statements are each atomic alone (no read-then-write: telemetry,
        presence, last seen): PostgreSQL runs several at once, without the writers' lock."""
        with self._tx() as conn:
            yield conn

    @contextmanager
    def _snapshot(self) -> Iterator[DbConn]:
        """Several reads that see one consistent state of the database."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn().execute(sql, params).fetchone()

    def _found(self, sql: str, params: Sequence[Any], missing: str) -> Any:
        """The row a lookup by key selects, or ``NotFound(missing)`` (the API's 404)."""
        row = self._one(sql, params)
        if row is None:
            raise NotFound(missing)
        return row
