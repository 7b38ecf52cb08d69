"""How every fleetctl command prints: ``-o table|wide|json|yaml`` (``--json`` = ``-o json``).

One format for the whole invocation, chosen once (:func:`set_format`) from flags
that may stand anywhere on the command line (:func:`extract_format`), so a
command only says *what* to show: :func:`emit` with its columns.

Tables are plain aligned text, the same on a terminal and in a pipe (``awk``,
``cut`` and ``grep`` work on them), headers in capitals as kubectl prints them.
On a terminal a table is fitted to its width by leaving out trailing columns,
and says which (``-o wide`` shows every field).  Values are never cut short or
broken inside a word; figures are rounded to what a person reads.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

FORMATS = ("table", "wide", "json", "yaml")
_GAP = "   "

_format = "table"


def set_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise click.BadParameter(f"{fmt!r}: choose one of {', '.join(FORMATS)}", param_hint="-o")
    global _format
    _format = fmt


def current_format() -> str:
    return _format


def machine_readable() -> bool:
    return _format in ("json", "yaml")


def extract_format(args: Sequence[str]) -> tuple[list[str], str | None]:
    """Take ``--json``, ``-o X``, ``-oX``, ``--output X`` and ``--output=X`` from anywhere
    in ``args`` (before a ``--``); returns the other arguments and the last format given.

    ``--output`` with a value that is not a format is left to the command: ``models pack
    --output FILE.efpkg`` names the file it writes."""
    rest: list[str] = []
    fmt: str | None = None
    items = iter(enumerate(args))
    for i, arg in items:
        if arg == "--":
            rest += list(args[i:])
            break
        if arg == "--json":
            fmt = "json"
        elif arg == "--output" and i + 1 < len(args) and args[i + 1] not in FORMATS:
            rest.append(arg)
        elif arg in ("-o", "--output"):
            nxt = next(items, None)
            if nxt is None:
                raise click.UsageError(f"{arg} needs a value: {'|'.join(FORMATS)}")
            fmt = nxt[1]
        elif arg.startswith("--output=") and arg.split("=", 1)[1] not in FORMATS:
            rest.append(arg)
        elif arg.startswith("--output="):
            fmt = arg.split("=", 1)[1]
        elif arg.startswith("-o") and not arg.startswith("--") and len(arg) > 2:
            fmt = arg[2:]
        else:
            rest.append(arg)
    return rest, fmt


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def emit(
    data: Any, *, as_json: bool = False, columns: Sequence[tuple[str, str]] = (), title: str = ""
) -> None:
    """Print ``data`` (a dict or a list of dicts) in the chosen format.

    ``as_json`` is what callers pass from ``ctx.as_json``: it asks for the
    machine-readable form, which is YAML when ``-o yaml`` was chosen.
    """
    if as_json or machine_readable():
        sys.stdout.write(dump(data))
        return
    rows = data if isinstance(data, list) else [data]
    if _format == "wide" or not columns:
        columns = _all_columns(rows, columns)
    width = _terminal_width()
    if title:
        click.echo(title)
    sys.stdout.write(render_table(rows, columns, width=width))


def report(data: Any, *lines: str) -> None:
    """Print a command's answer: ``data`` as it is for json/yaml, else ``lines`` for a person.

    The rule every command that answers in sentences rather than a table follows, so
    that ``-o json`` always gives the server's document and never the prose."""
    if machine_readable():
        sys.stdout.write(dump(data))
        return
    for line in lines:
        click.echo(line)


def emit_items(
    page: dict[str, Any],
    *,
    columns: Sequence[tuple[str, str]],
    title: str = "",
    row: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """Print a list the API answered (``{"items", "total"}``): the envelope as it is for
    json/yaml, a table of its items (each shaped by ``row``) otherwise."""
    if machine_readable():
        sys.stdout.write(dump(page))
        return
    rows = [row(r) for r in page["items"]] if row else page["items"]
    shown = f" (showing {len(rows)})" if page["total"] > len(rows) else ""
    emit(rows, columns=columns, title=f"{page['total']} {title}{shown}" if title else "")


def dump(data: Any) -> str:
    if _format == "yaml":
        import yaml

        return str(yaml.safe_dump(data, sort_keys=True, allow_unicode=True))
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def render_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], *, width: int | None
) -> str:
    """Aligned columns; with ``width`` (a terminal), the columns that fit it, and a note."""
    headers = [header.upper() for _, header in columns]
    cells = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    shown = len(columns)
    if width is not None and _format != "wide":
        used, shown = widths[0], 1
        while shown < len(columns) and used + len(_GAP) + widths[shown] <= width:
            used += len(_GAP) + widths[shown]
            shown += 1
    lines = [_line(headers[:shown], widths)] + [_line(r[:shown], widths) for r in cells]
    if not rows:
        lines.append("(none)")
    if shown < len(columns):
        hidden = ", ".join(headers[shown:])
        lines.append(f"({hidden} left out to fit the terminal; -o wide shows them)")
    return "\n".join(lines) + "\n"


def _line(values: Sequence[str], widths: Sequence[int]) -> str:
    return _GAP.join(v.ljust(widths[i]) for i, v in enumerate(values)).rstrip()


def _all_columns(
    rows: Sequence[dict[str, Any]], declared: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    columns = list(declared)
    seen = {key for key, _ in columns}
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                columns.append((key, key.replace("_", " ")))
    return columns


def _terminal_width() -> int | None:
    """The terminal's width when stdout is one, else None (a pipe: no fitting)."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size((100, 24)).columns


def cell(value: Any) -> str:
    """One value as a person reads it: times as dates, figures rounded, lists joined."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ",".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, float):
        return number(value)
    return " ".join(str(value).split())  # a newline would break the row


def number(value: float) -> str:
    """A float as a table shows it: a timestamp as a date, else at most 3 decimals."""
    if value > 1e9:
        return when(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
