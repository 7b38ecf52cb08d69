"""``edge-agent``: enroll this device, run the daemon, inspect it, predict from the shell.

Exit codes (systemd's ``Restart=on-failure`` restarts on any non-zero one, and
``RestartPreventExitStatus=2 3`` in the shipped unit stops it retrying those two
that a restart cannot fix):

====  =====================================================================
0     ok (``run``: stopped by SIGTERM/SIGINT after a clean shutdown)
1     runtime error (broker, disk, an unexpected failure)
2     bad configuration; the message names the field or file
3     not enrolled, or the identity (key, certificate) is unusable
4     ``predict``: the input was refused (unreadable file, wrong shape,
      dtype, NaN, too many rows); the message says what was expected
5     ``predict``: no model to predict with (no daemon answering and no
      loadable package), or the package was refused (hash, self-test)
130   interrupted (Ctrl-C)
====  =====================================================================

A model that fails to load does not stop ``run``: the daemon stays up with
``health: degraded`` and says why (see ``edge-agent status`` and the twin).
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import TextIO

import click

from edgefleet_common import logs
from edgefleet_common.cli import daemon_options, run
from edgefleet_common.config import load_cli_settings
from edgefleet_contract.errors import (
    ConfigError,
    EdgefleetError,
    IdentityError,
    InputRejected,
    ModelError,
)

from .config import AgentSettings

settings_options = daemon_options(
    config_help="agent.toml (EDGE_AGENT_* environment variables override it).",
    data_dir_help="Identity, spool and samples (default /var/lib/edgefleet).",
)


@click.group()
def cli() -> None:
    """The edgefleet device agent."""


@cli.command()
@click.option("--server", required=True, help="Fleet server URL, e.g. https://fleet:8080")
@click.option(
    "--token",
    default=None,
    help="One-time token from `fleetctl devices add` (visible in `ps` and shell history: "
    "prefer --token-file).",
)
@click.option(
    "--token-file",
    type=click.File("r"),
    default=None,
    help="Read the token from this file, or from standard input with '-'.",
)
@click.option("--force", is_flag=True, help="Replace an existing identity.")
@settings_options
def enroll(
    server: str,
    token: str | None,
    token_file: TextIO | None,
    force: bool,
    config: Path | None,
    data_dir: Path | None,
) -> None:
    """Make this device's key, get its certificate, and remember the broker."""
    from .identity import enroll as do_enroll

    if (token is None) == (token_file is None):
        raise ConfigError("give the enrollment token with exactly one of --token-file or --token")
    secret = token_file.read(4096).strip() if token_file is not None else str(token)
    if not secret:
        raise ConfigError(f"{getattr(token_file, 'name', '--token')} holds no enrollment token")
    settings = load_cli_settings(AgentSettings, config, data_dir)
    identity = do_enroll(settings.data_dir, server, secret, force=force)
    click.echo(
        f"enrolled as {identity.device_id}; broker {identity.broker_host}:"
        f"{identity.broker_port}; run `edge-agent run` to connect"
    )


@cli.command("run")
@settings_options
def run_daemon(config: Path | None, data_dir: Path | None) -> None:
    """Run the daemon until SIGTERM/SIGINT."""
    from . import allocator

    allocator.tune()  # before the runtime and the model allocate anything
    from .daemon import Agent
    from .identity import Identity

    settings = load_cli_settings(AgentSettings, config, data_dir)
    logs.configure(settings.log_level, settings.log_format)
    agent = Agent(settings, Identity.load(settings.data_dir))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent.start()
    try:
        # Wake up now and then: Python runs signal handlers in the main thread only, and a
        # SIGTERM the kernel hands to another thread does not interrupt an endless wait.
        while not stop.wait(0.5):
            pass
    finally:
        agent.stop()


@cli.command()
@settings_options
def status(config: Path | None, data_dir: Path | None) -> None:
    """Show identity, certificate expiry and spool depth."""
    from .daemon import status as read_status

    settings = load_cli_settings(AgentSettings, config, data_dir)
    click.echo(json.dumps(read_status(settings.data_dir), indent=2))


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--model",
    "-m",
    type=click.Path(path_type=Path),
    default=None,
    help="Predict in-process with this package instead of asking the running daemon.",
)
@settings_options
def predict(file: Path, model: Path | None, config: Path | None, data_dir: Path | None) -> None:
    """Predict the rows in FILE (.npy, .csv or .json) or the image FILE (.png, .jpg, ...).

    Asks the running daemon's local API when it answers; otherwise loads the
    model in this process (``--model``, else the configured ``model``).
    """
    from .predict import predict_file

    settings = load_cli_settings(AgentSettings, config, data_dir)
    click.echo(json.dumps(predict_file(settings, file, model), indent=2))


def main() -> None:
    run(
        cli,
        (
            (ConfigError, 2, "configuration error"),
            (IdentityError, 3, "identity error"),
            (InputRejected, 4, "input refused"),
            (ModelError, 5, "model error"),
            (EdgefleetError, 1, "error"),
        ),
    )
