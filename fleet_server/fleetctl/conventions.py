"""What every fleetctl command gets without saying so: its example and completions.

Applied once to the whole command tree after the command modules have
registered, so a new command inherits them by its parameter names
(``device_id``, ``rollout_id``, ``run_id``, ``--artifact``, ``--model``,
``--firmware``) and a command module stays about its own area.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import click
from click.shell_completion import CompletionItem

from .examples import EXAMPLES

Completer = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]


def walk(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    """Every leaf command under ``group`` with its path, e.g. ``("devices list", cmd)``."""
    for name, command in sorted(group.commands.items()):
        here = (*path, name)
        if isinstance(command, click.Group):
            yield from walk(command, here)
        else:
            yield " ".join(here), command


def apply_conventions(cli: click.Group) -> None:
    for path, command in walk(cli):
        example = EXAMPLES.get(path)
        if example:
            command.epilog = f"\b\nExample:\n  {example}"
        for param in command.params:
            name = param.name or ""
            completer = COMMAND_COMPLETERS.get((path, name)) or COMPLETERS.get(name)
            if completer is not None:
                param._custom_shell_complete = completer


def _items(path: str, key: Callable[[dict[str, Any]], str], **params: Any) -> list[str]:
    """Values for completion from the logged-in server; nothing (not an error) without one."""
    from .client import Client, load_login

    login = load_login()
    if login.server is None or login.token is None:
        return []
    client = Client(login.server, login.token, timeout=3.0)
    try:
        out = client.get(path, **params)
    except Exception:  # completion must never print an error into the prompt
        return []
    finally:
        client.close()
    rows = out.get("items", []) if isinstance(out, dict) else out
    return [key(row) for row in rows if isinstance(row, dict)]


def _completer(path: str, key: Callable[[dict[str, Any]], str], **params: Any) -> Completer:
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        return [CompletionItem(v) for v in _items(path, key, **params) if v.startswith(incomplete)]

    return complete


def _at_version(row: dict[str, Any]) -> str:
    return f"{row.get('name')}@{row.get('version')}"


def _name(row: dict[str, Any]) -> str:
    return str(row.get("name"))


_MODELS = _completer("/artifacts", _at_version, kind="model", limit=1000)
_FIRMWARE = _completer("/artifacts", _at_version, kind="firmware", limit=1000)

COMPLETERS: dict[str, Completer] = {
    "device_id": _completer("/devices", lambda r: str(r.get("id")), limit=1000),
    "rollout_id": _completer("/rollouts", lambda r: str(r.get("id"))),
    "run_id": _completer("/training/runs", lambda r: str(r.get("id"))),
    "artifact": _completer("/artifacts", _at_version, limit=1000),
}
"""By parameter name, wherever it appears."""

COMMAND_COMPLETERS: dict[tuple[str, str], Completer] = {
    ("twin set", "model"): _MODELS,
    ("twin set", "firmware"): _FIRMWARE,
    ("train start", "model"): _completer("/artifacts", _name, kind="model", limit=1000),
}
"""Where a parameter's name means different things in different commands."""
