"""What the three command lines share: how they end, and the daemons' common options.

Every face (``edge-agent``, ``fleet-server``, ``fleetctl``) runs its click group
through :func:`run`, so an :class:`EdgefleetError` never becomes a traceback.
The two daemons' commands take the same ``--config``/``--data-dir`` pair
(:func:`daemon_options`), read by :func:`~edgefleet_common.config.load_cli_settings`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from edgefleet_contract.errors import ConfigError, EdgefleetError

ExitRule = tuple[type[EdgefleetError], int, str]
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_RULES: Sequence[ExitRule] = (
    (ConfigError, 2, "configuration error"),
    (EdgefleetError, 1, "error"),
)


def run(group: click.Group, rules: Sequence[ExitRule] = DEFAULT_RULES) -> None:
    """Invoke ``group``; map errors to ``prefix: message`` and the rule's exit code.

    Rules are tried in order, so put specific classes first.  Ctrl-C exits 130.
    """
    try:
        group.main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgefleetError as exc:
        for cls, code, prefix in rules:
            if isinstance(exc, cls):
                click.echo(f"{prefix}: {exc}", err=True)
                sys.exit(code)
        raise


def daemon_options(*, config_help: str, data_dir_help: str) -> Callable[[F], F]:
    """The ``--config/-c FILE`` and ``--data-dir DIR`` options of a daemon command.

    Each daemon words the help for its own file and directory; the names, types
    and defaults are the same on both, so the docs and the units can use either.
    """
    config = click.option(
        "--config", "-c", type=click.Path(path_type=Path), default=None, help=config_help
    )
    data_dir = click.option(
        "--data-dir", type=click.Path(path_type=Path), default=None, help=data_dir_help
    )

    def apply(command: F) -> F:
        return config(data_dir(command))

    return apply
