"""Version comparison for SQL: the SQLite store registers :func:`version_cmp` as
``fleet_version_cmp`` so a selector compiled to SQL orders versions exactly as
:func:`fleet_server.versions.version_key` does in Python."""

from __future__ import annotations

from .versions import parse_version, version_key

__all__ = ["version_cmp"]


def version_cmp(a: str | None, b: str | None) -> int | None:
    """-1, 0 or 1 as ``a`` sorts before, with or after ``b``; None when either is
    missing or ``a`` is not a version (it then matches no comparison)."""
    if a is None or b is None or parse_version(a) is None:
        return None
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)
