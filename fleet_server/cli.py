"""``fleet-server``: initialize, run, and the demo.

Exit codes: 0 done, 1 a runtime error (message on stderr), 2 bad usage or
configuration (the message names the field), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import click

from edgefleet_common import logs
from edgefleet_common.cli import daemon_options
from edgefleet_common.cli import run as run_cli
from edgefleet_common.config import load_cli_settings
from edgefleet_contract.errors import BrokerError, ConfigError

from .config import ServerSettings


@contextlib.contextmanager
def data_dir_errors(data_dir: Path) -> Iterator[None]:
    """An OS error under the data directory is one line and exit 2, not a traceback."""
    from .preflight import data_dir_error

    try:
        yield
    except OSError as exc:
        raise data_dir_error(data_dir, exc) from None


settings_options = daemon_options(
    config_help="fleet.toml (settings; FLEET_* environment variables override it).",
    data_dir_help="Where CA, keys, database and broker files live (default var/fleet).",
)


@click.group()
def cli() -> None:
    """The edgefleet fleet server."""


@cli.command()
@settings_options
@click.option("--admin-password-stdin", is_flag=True, help="Read the admin password from stdin.")
def init(config: Path | None, data_dir: Path | None, admin_password_stdin: bool) -> None:
    """Create the fleet CA, broker and server certificates, the database and an admin."""
    from .server import initialize

    settings = load_cli_settings(ServerSettings, config, data_dir)
    password = sys.stdin.readline().rstrip("\n") if admin_password_stdin else None
    with data_dir_errors(settings.data_dir):
        generated = initialize(settings, admin_password=password)
    click.echo(f"fleet initialized in {settings.data_dir}")
    offline = settings.data_dir / "offline"
    if any(offline.glob("root-key-*.pem")):
        click.secho(
            f"WARNING: {offline} holds the TUF root key. It belongs on an offline machine: "
            f"move it off this server (see {offline / 'README-MOVE-OFFLINE.txt'}).",
            fg="yellow",
            err=True,
        )
    if generated:
        click.echo("admin user: admin")
        click.echo(f"admin password (shown once, change it): {generated}")


@cli.command()
@settings_options
@click.option(
    "--from-sqlite",
    "from_sqlite",
    type=click.Path(path_type=Path),
    default=None,
    help="Copy this SQLite database (an embedded install's fleet.db) into the empty "
    "PostgreSQL database of [database] url.",
)
def migrate(config: Path | None, data_dir: Path | None, from_sqlite: Path | None) -> None:
    """Upgrade the database schema to this release's version (SQLite or PostgreSQL).

    Safe to run again (a database at the newest version is left alone) and while
    other replicas start (they wait for it).  A database written by a newer
    release is refused with both versions.  With --from-sqlite it moves an
    embedded install to PostgreSQL instead (docs/operations.md, "From SQLite to
    PostgreSQL").

    \b
    Example:
      FLEET_DATABASE__URL=postgresql://edgefleet@db/fleet fleet-server migrate
      FLEET_DATABASE__URL=postgresql://edgefleet@db/fleet fleet-server migrate \\
          --from-sqlite /var/lib/fleet/fleet.db
    """
    from .store.migrations import upgrade_url

    settings = load_cli_settings(ServerSettings, config, data_dir)
    if from_sqlite is not None:
        from .sqlite_import import import_sqlite

        counts = import_sqlite(from_sqlite, settings.database_url)
        total = sum(counts.values())
        click.echo(f"copied {total} rows in {len(counts)} tables from {from_sqlite}")
        for name, n in counts.items():
            if n:
                click.echo(f"  {name}: {n}")
        return
    with data_dir_errors(settings.data_dir):
        before, after = upgrade_url(settings.database_url)
    if before == after:
        click.echo(f"database already at schema version {after}")
    else:
        click.echo(f"database upgraded from schema version {before} to {after}")


@cli.command()
@settings_options
@click.option(
    "--role",
    type=click.Choice(["all", "api", "ingest", "worker"]),
    default="all",
    show_default=True,
    envvar="FLEET_ROLE",
    help="What this process runs: all of it, or (PostgreSQL only) the REST API, the "
    "ingest worker, or the singletons (rollouts, training, TUF re-signing, retention).",
)
def run(config: Path | None, data_dir: Path | None, role: str) -> None:
    """Run the server: managed broker, ingest, REST API (until SIGTERM/SIGINT)."""
    from .server import FleetServer

    settings = load_cli_settings(ServerSettings, config, data_dir)
    logs.configure(settings.log_level, settings.log_format)
    with data_dir_errors(settings.data_dir):
        server = FleetServer(settings, role=role)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with data_dir_errors(settings.data_dir):
        server.start()
    serving = f"API {settings.api_url}" if server.parts.api else "no API"
    click.echo(f"fleet server running (role {role}); {serving}  (Ctrl-C to stop)")
    try:
        while not (stop.wait(0.5) or server.failed.is_set()):
            pass
    finally:
        server.stop()
    if server.failure:
        raise BrokerError(f"fleet server stopped: {server.failure}")


@cli.command("broker-config")
@settings_options
def broker_config(config: Path | None, data_dir: Path | None) -> None:
    """Write mosquitto.conf, ACL and CRL for a broker run beside the server (compose).

    The files go to the data dir's broker/ and configure mosquitto like the managed
    broker, with every broker.replicas identity allowed to see the fleet.

    \b
    Example:
      fleet-server broker-config && exec mosquitto -c /var/lib/fleet/broker/mosquitto.conf
    """
    from .broker_files import write_broker_files

    settings = load_cli_settings(ServerSettings, config, data_dir)
    with data_dir_errors(settings.data_dir):
        conf = write_broker_files(settings)
    click.echo(str(conf))


@cli.command("broker-authz")
@click.option(
    "--listen",
    default="127.0.0.1:15690",
    show_default=True,
    help="host:port to answer on (keep it on loopback, beside the RabbitMQ node).",
)
def broker_authz(listen: str) -> None:
    """Answer a RabbitMQ node's HTTP authorization backend: the client-id check.

    A device may use only its own client id; without this check RabbitMQ 3.10 lets a
    device disconnect another by claiming its id.  Stateless: run one beside each node
    and point the node at it (docs/operations.md, "Broker cluster").

    \b
    Example:
      fleet-server broker-authz --listen 127.0.0.1:15690
    """
    from .config import host_port
    from .rabbitmq_authz import ClientIdCheck

    try:
        host, port = host_port(listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    logs.configure("INFO")
    try:
        check = ClientIdCheck(host, port).start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    click.echo(f"client-id check for RabbitMQ on {check.url}", err=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        stopping.wait()
    finally:
        check.stop()


@cli.group()
def users() -> None:
    """Local account recovery on the server host (no login needed).

    \b
    Example:
      fleet-server users reset-password admin --data-dir /var/lib/edgefleet
    """


@users.command("reset-password")
@settings_options
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
@click.option("--enable", is_flag=True, help="Also enable the user if it was disabled.")
def reset_password_cmd(
    config: Path | None, data_dir: Path | None, username: str, password_stdin: bool, enable: bool
) -> None:
    """Set a user's password and end its sessions and tokens.

    Works on the data directory directly, so it needs no admin login; run it as the
    user that owns the data directory.  Without --password-stdin a password is
    generated and shown once.

    \b
    Example:
      echo 'a-new-long-password' | fleet-server users reset-password admin --password-stdin
    """
    from .local_accounts import reset_password
    from .preflight import check_data_dir
    from .store import database_exists, open_store

    settings = load_cli_settings(ServerSettings, config, data_dir)
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    with data_dir_errors(settings.data_dir):
        check_data_dir(settings.data_dir, create=False)
        if not database_exists(settings.database_url):
            raise ConfigError(f"{settings.data_dir} has no database; run `fleet-server init` first")
        store = open_store(settings.database_url)
        try:
            done = reset_password(store, username, password, enable=enable)
        finally:
            store.close()
    click.echo(f"password of {done.username!r} reset; {done.tokens_revoked} session(s) ended")
    if done.enabled:
        click.echo(f"{done.username!r} is enabled again")
    if done.generated:
        click.echo(f"new password (shown once, change it): {done.generated}")


@cli.command()
@click.option("--devices", default=5, show_default=True, help="Agent processes to enroll.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("var/demo"))
@click.option("--rounds", type=int, default=None, help="Federated rounds (default 8, quick 3).")
@click.option("--quick", is_flag=True, help="Short mode: few rounds, short probation.")
@click.option("--exit-when-done", is_flag=True, help="Stop after the summary.")
@click.option("--duration", default=0.0, help="Keep running this many seconds after the summary.")
def demo(
    devices: int,
    data_dir: Path,
    rounds: int | None,
    quick: bool,
    exit_when_done: bool,
    duration: float,
) -> None:
    """The whole loop: serve, label, drift, train federatedly, sign, roll out, summarize."""
    import dataclasses

    # The demo runs agents, so it lives outside the server package (which never
    # imports the agent); the command stays here and loads it only when run.
    from edgefleet_demo import Options, run_demo

    options = Options.quick(devices) if quick else Options(devices=devices)
    options = dataclasses.replace(
        options,
        rounds=rounds or options.rounds,
        exit_when_done=exit_when_done,
        duration=duration,
    )
    code = run_demo(data_dir, options)
    if code:
        sys.exit(code)


SERVER_EXTRA = ("fastapi", "uvicorn", "sqlite_utils")


def missing_server_extra() -> str | None:
    """The first server dependency that is not installed (an agent-only install), or None."""
    import importlib

    for name in SERVER_EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            return name
    return None


def main() -> None:
    missing = missing_server_extra()
    if missing is not None:
        click.echo(
            f"fleet-server needs the server extra ({missing} is not installed): "
            "pip install 'edgefleet[server]'. This looks like a device install; "
            "devices run edge-agent.",
            err=True,
        )
        sys.exit(2)
    run_cli(cli)
