"""Running ``fleetctl`` in-process in tests: exit code, stdout and stderr, and an admin login.

Every test that runs it takes the ``fleetctl_config`` fixture (``conftest.py``),
so the login it stores is the test's own and nothing leaks in from the
environment.
"""

from __future__ import annotations

import sys

import click
from click.testing import CliRunner

from fleet_server.fleetctl.cli import main

from .harness import ADMIN_PASSWORD


def fleetctl(args: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    """``fleetctl ARGS`` through its real entry point (error rules and exit codes included)."""
    runner = CliRunner()

    def entry() -> None:
        sys.argv = ["fleetctl", *args]
        main()

    result = runner.invoke(click.Command("x", callback=entry), [], input=stdin)
    code = result.exit_code if isinstance(result.exit_code, int) else 1
    return code, result.stdout, result.stderr


def login_admin(api_url: str) -> None:
    """``fleetctl login`` as the ``fleet`` fixture's admin; later calls use the stored token."""
    code, _, err = fleetctl(
        ["login", "--server", api_url, "-u", "admin", "--password-stdin"], ADMIN_PASSWORD + "\n"
    )
    assert code == 0, err
