"""The one way the three command lines end: a clear line on stderr and a meaningful code.

Every face (``edge-agent``, ``fleet-server``, ``fleetctl``) runs its click group
through :func:`run`, so an :class:`EdgefleetError` never becomes a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from .errors import ConfigError, EdgefleetError

ExitRule = tuple[type[EdgefleetError], int, str]

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
