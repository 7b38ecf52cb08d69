"""How versions order: part by part, numeric parts as numbers (1.10 > 1.9).

One definition for the selector language, the SQLite store's SQL function and
(re-stated in SQL) PostgreSQL's ``fleet_version_cmp``.
"""

from __future__ import annotations

import re


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    parts = re.split(r"[.\-+]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p)


def version_cmp(a: str | None, b: str | None) -> int | None:
    """-1, 0 or 1 as ``a`` sorts before, with or after ``b``; None when either is."""
    if a is None or b is None:
        return None
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)
