"""Human tables by default, JSON with ``--json`` (for scripts).

Tables never cut a value short: the first column (the id people copy into the
next command) is never wrapped, and the others fold rather than end in "…".
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def emit(
    data: Any, *, as_json: bool, columns: Sequence[tuple[str, str]] = (), title: str = ""
) -> None:
    """Print ``data`` (a dict or a list of dicts) as JSON or as a table of ``columns``."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return
    rows = data if isinstance(data, list) else [data]
    if not columns:
        columns = [(k, k) for k in (rows[0] if rows else {})]
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    table = Table(title=title or None)
    for i, (_, header) in enumerate(columns):
        if i == 0:
            widest = max([len(header), *(len(r[0]) for r in cells)])
            table.add_column(header, no_wrap=True, min_width=widest)
        else:
            table.add_column(header, overflow="fold")
    for r in cells:
        table.add_row(*r)
    Console().print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value > 1e9:
        return when(value)
    return str(value)
