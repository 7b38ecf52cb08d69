"""``edge-agent``: enroll this device, run the daemon, inspect it.

Exit codes: 0 ok, 1 runtime error, 2 bad configuration (message names the
field), 3 not enrolled / identity problem, 130 interrupted.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import click

from edgefleet_contract import logs
from edgefleet_contract.cli import run
from edgefleet_contract.config import load_settings
from edgefleet_contract.errors import ConfigError, EdgefleetError, IdentityError

from .config import AgentSettings


def _settings(config: Path | None, data_dir: Path | None) -> AgentSettings:
    overrides = {"data_dir": data_dir} if data_dir else {}
    return load_settings(AgentSettings, config, **overrides)


config_option = click.option(
    "--config",
    "-c",
    type=click.Path(path_type=Path),
    default=None,
    help="agent.toml (EDGE_AGENT_* environment variables override it).",
)
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Identity, spool and samples (default /var/lib/edgefleet).",
)


@click.group()
def cli() -> None:
    """The edgefleet device agent."""


@cli.command()
@click.option("--server", required=True, help="Fleet server URL, e.g. https://fleet:8080")
@click.option("--token", required=True, help="One-time token from `fleetctl devices add`.")
@click.option("--force", is_flag=True, help="Replace an existing identity.")
@config_option
@data_dir_option
def enroll(
    server: str, token: str, force: bool, config: Path | None, data_dir: Path | None
) -> None:
    """Make this device's key, get its certificate, and remember the broker."""
    from .identity import enroll as do_enroll

    settings = _settings(config, data_dir)
    identity = do_enroll(settings.data_dir, server, token, force=force)
    click.echo(
        f"enrolled as {identity.device_id}; broker {identity.broker_host}:"
        f"{identity.broker_port}; run `edge-agent run` to connect"
    )


@cli.command("run")
@config_option
@data_dir_option
def run_daemon(config: Path | None, data_dir: Path | None) -> None:
    """Run the daemon until SIGTERM/SIGINT."""
    from .daemon import Agent
    from .identity import Identity

    settings = _settings(config, data_dir)
    logs.configure(settings.log_level, settings.log_format)
    agent = Agent(settings, Identity.load(settings.data_dir))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent.start()
    try:
        stop.wait()
    finally:
        agent.stop()


@cli.command()
@config_option
@data_dir_option
def status(config: Path | None, data_dir: Path | None) -> None:
    """Show identity, certificate expiry and spool depth."""
    from .daemon import status as read_status

    settings = _settings(config, data_dir)
    click.echo(json.dumps(read_status(settings.data_dir), indent=2))


def main() -> None:
    run(
        cli,
        (
            (ConfigError, 2, "configuration error"),
            (IdentityError, 3, "identity error"),
            (EdgefleetError, 1, "error"),
        ),
    )
