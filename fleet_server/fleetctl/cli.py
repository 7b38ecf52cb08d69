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

from edgefleet_common.cli import run
from edgefleet_contract.errors import EdgefleetError

from .client import Client, check_server_url, forget_login, load_login, save_login
from .output import FORMATS, emit, extract_format, machine_readable, set_format

F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    def __init__(self) -> None:
        self._client: Client | None = None

    @property
    def as_json(self) -> bool:
        """Machine-readable output asked for (``-o json|yaml``, ``--json``)."""
        return machine_readable()

    @property
    def client(self) -> Client:
        if self._client is None:
            login = load_login()
            self._client = Client(login.require_server(), login.token)
        return self._client


pass_ctx = click.make_pass_decorator(Ctx)


class FleetctlGroup(click.Group):
    """The root group: output flags are read wherever they stand on the line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest, fmt = extract_format(args)
        set_format(fmt or "table")
        return super().parse_args(ctx, rest)


@click.group(cls=FleetctlGroup)
@click.option(
    "--output",
    "-o",
    type=click.Choice(FORMATS),
    default="table",
    help="table (fitted to the terminal), wide (every field), json or yaml; anywhere on the line.",
)
@click.option("--json", "as_json", is_flag=True, help="Same as -o json.")
@click.version_option(package_name="edgefleet", prog_name="fleetctl")
@click.pass_context
def cli(click_ctx: click.Context, output: str, as_json: bool) -> None:
    """Operate an edgefleet fleet: devices, twins, models, rollouts, training, users, audit.

    Log in once (`fleetctl login --server URL -u USER`); later commands use the
    stored token.  Every command takes -o table|wide|json|yaml.
    """
    click_ctx.obj = Ctx()


@cli.command()
@click.option("--server", default=None, help="Fleet server URL, e.g. https://fleet.example:8080")
@click.option("--username", "-u", prompt=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_ctx
def login(ctx: Ctx, server: str | None, username: str, password_stdin: bool) -> None:
    """Log in and keep an API token for later commands.

    The first login needs --server; later ones reuse the stored server.
    """
    saved = load_login().server
    if server is None and saved is None:
        raise click.UsageError("give --server URL (the fleet server's address) the first time")
    url = check_server_url(server or saved or "")
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
    """Revoke the stored token and forget it (the server URL is kept)."""
    if load_login().server is None:
        click.echo("not logged in")
        return
    with contextlib.suppress(EdgefleetError):
        ctx.client.post("/auth/logout")
    forget_login()
    click.echo("logged out")


@cli.command()
@pass_ctx
def whoami(ctx: Ctx) -> None:
    """Show the server and who the stored token belongs to."""
    me = dict(ctx.client.get("/auth/me"))
    me["server"] = load_login().server
    emit(me, as_json=ctx.as_json)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script (commands, options, device and rollout ids).

    Load it in your shell's start-up file, e.g. for bash:
    eval "$(fleetctl completion bash)".
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # the choices are the shells click knows
    click.echo(cls(cli, {}, "fleetctl", "_FLEETCTL_COMPLETE").source())


COMMAND_MODULES = (
    "cmd_devices",
    "cmd_telemetry",
    "cmd_admin",
    "cmd_train",
    "cmd_artifacts",
    "cmd_keys",
    "cmd_rollouts",
)
"""Each module holds one area's command groups and a ``register(cli)`` function;
a new area (models, firmware, rollouts, keys, ...) is one more module here."""


def register_commands(group: click.Group) -> None:
    """Add every area's commands to ``group`` (``main`` does it before running)."""
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(group)
    # The simulator runs real agents, so it lives outside the server package (which
    # never imports the agent); its command module imports no agent code itself.
    from edgefleet_sim.command import register as register_simulate

    register_simulate(group)


CLI_EXTRA = ("rich", "yaml")
"""What fleetctl prints with, from the ``cli`` extra (which ``server`` includes)."""


def main() -> None:
    from importlib.util import find_spec

    missing = [name for name in CLI_EXTRA if find_spec(name) is None]
    if missing:
        click.echo(
            f"fleetctl needs the cli extra ({', '.join(missing)} not installed): "
            "pip install 'edgefleet[cli]' (the server extra includes it). A device install "
            "leaves it out; devices run edge-agent.",
            err=True,
        )
        sys.exit(2)
    register_commands(cli)
    from .conventions import apply_conventions

    apply_conventions(cli)
    run(cli)
