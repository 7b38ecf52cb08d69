"""``fleetctl``: the operator's command line over the REST API.

Each command group is a small module; this one wires them together and turns
every :class:`EdgefleetError` into one clear line on stderr and exit code 1
(2 for usage errors, by click's convention) — never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from edgefleet_contract.cli import run
from edgefleet_contract.errors import EdgefleetError

from .client import Client, forget_login, load_login, save_login
from .output import emit

F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            login = load_login()
            self._client = Client(login.server, login.token)
        return self._client


pass_ctx = click.make_pass_decorator(Ctx)


@click.group()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def cli(click_ctx: click.Context, as_json: bool) -> None:
    """Operate an edgefleet fleet: devices, twins, users, audit."""
    click_ctx.obj = Ctx(as_json)


@cli.command()
@click.option("--server", default=None, help="Fleet server URL, e.g. https://fleet.example:8080")
@click.option("--username", "-u", prompt=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_ctx
def login(ctx: Ctx, server: str | None, username: str, password_stdin: bool) -> None:
    """Log in and keep an API token for later commands."""
    url = (server or load_login().server).rstrip("/")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True)
    result = Client(url).post(
        "/auth/login", {"username": username, "password": password, "token_name": "fleetctl"}
    )
    path = save_login(url, result["token"])
    if ctx.as_json:
        emit({k: v for k, v in result.items() if k != "token"}, as_json=True)
    else:
        click.echo(
            f"logged in to {url} as {result['username']} ({result['role']}); token in {path}"
        )


@cli.command()
@pass_ctx
def logout(ctx: Ctx) -> None:
    """Revoke the stored token and forget it."""
    with contextlib.suppress(EdgefleetError):
        ctx.client.post("/auth/logout")
    forget_login()
    click.echo("logged out")


@cli.command()
@pass_ctx
def whoami(ctx: Ctx) -> None:
    """Show who the stored token belongs to."""
    emit(ctx.client.get("/auth/me"), as_json=ctx.as_json)


COMMAND_MODULES = (
    "cmd_devices",
    "cmd_telemetry",
    "cmd_admin",
    "cmd_train",
    "cmd_artifacts",
    "cmd_keys",
    "cmd_rollouts",
    "cmd_simulate",
)
"""Each module holds one area's command groups and a ``register(cli)`` function;
a new area (models, firmware, rollouts, keys, ...) is one more module here."""


def main() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(cli)
    run(cli)
