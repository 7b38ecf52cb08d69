"""The shared test harness: a real fleet CA and a real mosquitto with mTLS, ACL and CRL.

``broker`` is one managed broker for the whole session (tests must use their
own device ids); ``fresh_broker`` is a private one for tests that kill,
restart or reconfigure it.  ``identity("dev-1")`` issues a device key and
certificate from the test CA.  Nothing talks to the system broker on 1883.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from edgefleet_common.mqtt import TlsFiles
from edgefleet_contract.errors import BrokerError, ConfigError
from fleet_server.broker import ManagedBroker, find_mosquitto
from fleet_server.config import DatabaseSettings, ServerSettings
from fleet_server.server import FleetServer, initialize
from fleet_server.store import Store, open_store

from .harness import (
    ADMIN_PASSWORD,
    Client,
    Pki,
    free_port,
    require,
    server_settings,
    start_broker,
)
from .pgserver import PgServer

if TYPE_CHECKING:
    from .tuf_sim import RepoServer

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

# Tests must not depend on timing: a loaded CI machine can take longer than
# Hypothesis' default 200 ms per example without anything being wrong.
settings.register_profile("edgefleet", deadline=None)
settings.load_profile("edgefleet")


def _require_mosquitto() -> None:
    try:
        find_mosquitto("mosquitto")
    except BrokerError as exc:  # pragma: no cover - environment problem, said plainly
        require(False, f"mosquitto ({exc})", "run .ci/setup-system (make setup does)")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The session's fleet CA, with the server's MQTT identity (``pki.server``)."""
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedBroker]:
    """One managed mosquitto for the session (mTLS, ACL, CRL); use unique device ids."""
    _require_mosquitto()
    b = start_broker(pki, tmp_path_factory.mktemp("broker"))
    yield b
    b.stop()


@pytest.fixture(scope="session")
def rabbit_cluster(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A 3-node RabbitMQ cluster (mTLS MQTT + AMQPS, own ports/dirs) for the session."""
    from fleet_server.rabbitmq_local import LocalRabbitCluster

    cluster = LocalRabbitCluster(tmp_path_factory.mktemp("rabbit"), pki.ca)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def rabbit(rabbit_cluster: object) -> object:
    """The session's cluster with all three nodes running (a node a test killed is
    started again first, so only a test that follows a kill pays for the restart)."""
    from fleet_server.rabbitmq_local import LocalRabbitCluster

    assert isinstance(rabbit_cluster, LocalRabbitCluster)
    dead = [n for n in rabbit_cluster.nodes if not n.alive()]
    for node in dead:
        node.start()
    if dead:
        rabbit_cluster.wait_running(len(rabbit_cluster.nodes), 240)
    return rabbit_cluster


@pytest.fixture
def fresh_broker(pki: Pki, tmp_path: Path) -> Iterator[ManagedBroker]:
    """A private managed broker for tests that kill, reload or reconfigure it."""
    _require_mosquitto()
    b = start_broker(pki, tmp_path / "broker")
    yield b
    b.stop()


@pytest.fixture
def identity(pki: Pki) -> Callable[..., TlsFiles]:
    """``identity("dev-1")`` -> TlsFiles (CA, cert, 0600 key) issued by the session CA."""
    return pki.identity


@pytest.fixture
def mqtt_client() -> Iterator[Callable[..., Client]]:
    """``mqtt_client(tls, client_id)`` -> a paho v5 test Client, closed after the test."""
    made: list[Client] = []

    def make(tls: TlsFiles | None, client_id: str, **kw: object) -> Client:
        c = Client(tls, client_id, **kw)  # type: ignore[arg-type]
        made.append(c)
        return c

    yield make
    for c in made:
        with contextlib.suppress(Exception):
            c.close()


@pytest.fixture
def fleetctl_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own ``fleetctl`` config file; no server or token comes from the environment."""
    path = tmp_path / "fleetctl.json"
    monkeypatch.setenv("FLEETCTL_CONFIG", str(path))
    monkeypatch.delenv("FLEETCTL_TOKEN", raising=False)
    monkeypatch.delenv("FLEETCTL_SERVER", raising=False)
    return path


@pytest.fixture
def repo_server() -> Iterator[RepoServer]:
    """A signed TUF repository (fresh keys, nothing published) served over loopback HTTP."""
    from .tuf_sim import RepoServer, TufRepo

    srv = RepoServer(TufRepo())
    yield srv
    srv.close()


@pytest.fixture
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FleetServer]:
    """A whole fleet server (store, CA, managed broker, ingest, API) on free ports.

    On SQLite; a test marked ``@pytest.mark.parametrize("fleet", ["sqlite",
    "postgresql"], indirect=True)`` runs on both (PostgreSQL: a fresh database on the
    session's private cluster)."""
    settings = server_settings(tmp_path / "fleet")
    assert isinstance(settings, ServerSettings)
    if getattr(request, "param", "sqlite") == "postgresql":
        pg: PgServer = request.getfixturevalue("pg_server")
        name = pg.create_database()
        request.addfinalizer(lambda: pg.drop_database(name))
        settings = settings.model_copy(update={"database": DatabaseSettings(url=pg.dsn(name))})
    initialize(settings, admin_password=ADMIN_PASSWORD)
    server = start_on_free_ports(settings)
    yield server
    server.stop()


@pytest.fixture
def server(settings: ServerSettings) -> Iterator[FleetServer]:
    """A fleet server on the test module's own ``settings`` fixture (which initialises
    its data directory), started before the test and stopped after it."""
    srv = FleetServer(settings)
    srv.start()
    yield srv
    srv.stop()


def start_on_free_ports(settings: ServerSettings, tries: int = 3) -> FleetServer:
    """Start a server; when another process took a port between ``free_port()`` and the
    bind (the server refuses a taken port with a ConfigError), try again on fresh ports."""
    for attempt in range(tries):
        server = FleetServer(settings)
        try:
            server.start()
            return server
        except ConfigError as exc:
            taken = "could not listen" in str(exc) or "already in use" in str(exc)
            if not taken or attempt == tries - 1:
                raise
            settings = settings.model_copy(
                update={
                    "api": settings.api.model_copy(update={"port": free_port()}),
                    "broker": settings.broker.model_copy(update={"port": free_port()}),
                }
            )
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's private PostgreSQL cluster (initdb in a temp dir, free loopback port).

    Never skipped: a machine without PostgreSQL's binaries fails here, and
    ``.ci/setup-system`` installs them."""
    server = PgServer().start()
    yield server
    server.destroy()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh empty database on the session's cluster for this test, dropped after it."""
    with pg_server.database() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store location on each backend: a SQLite file, or a new PostgreSQL
    database on the session's private cluster (dropped after the test)."""
    if request.param == "sqlite":
        return str(tmp_path / "fleet.db")
    pg: PgServer = request.getfixturevalue("pg_server")
    name = pg.create_database()
    request.addfinalizer(lambda: pg.drop_database(name))
    return pg.dsn(name)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An open store at ``store_url`` (so on each backend), closed after the test; a
    module that needs another kind of store defines its own ``store``."""
    s = open_store(store_url)
    yield s
    s.close()
