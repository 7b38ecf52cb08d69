"""A fleet of fleet-server processes on one PostgreSQL database, for the kill -9 tests.

One shared data directory (CA, TUF repository, artifacts), one private PostgreSQL
database, one real mosquitto whose ACL lists every replica identity, and
``fleet-server run --role ...`` processes started with ``FLEET_*`` variables --
what compose.yaml and the systemd template unit do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psycopg

from fleet_server.broker import BrokerLayout, ManagedBroker
from fleet_server.config import (
    SERVER_IDENTITY,
    ApiSettings,
    BrokerSettings,
    DatabaseSettings,
    ServerSettings,
)
from fleet_server.pki import FleetCA
from fleet_server.server import FleetServer, initialize
from fleet_server.store import open_store
from fleet_server.store.base import Store

from .harness import ADMIN_PASSWORD, free_port, wait_for
from .ota_server import add_digits
from .rollout_devices import Api

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 180.0


class Replica:
    """One ``fleet-server run`` process."""

    def __init__(self, cluster: Cluster, name: str, role: str) -> None:
        self.name, self.role = name, role
        self.api_port = free_port()
        self.log = cluster.root / f"{name}.log"
        env = {
            **os.environ,
            "FLEET_DATABASE__URL": cluster.dsn,
            "FLEET_REPLICA": name,
            "FLEET_API__PORT": str(self.api_port),
            "FLEET_BROKER__MODE": "external",
            "FLEET_BROKER__URL": f"mqtts://127.0.0.1:{cluster.broker.port}",
            "FLEET_BROKER__CA_FILE": str(cluster.ca.cert_file),
            "FLEET_LOG_FORMAT": "text",
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from fleet_server.cli import main; main()", "run",
                 "--role", role, "--data-dir", str(cluster.data_dir)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def wait_api(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                return httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, TIMEOUT_S, f"the API of {self.name}")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


class Cluster:
    def __init__(self, root: Path, dsn: str, names: list[str]) -> None:
        self.root, self.dsn = root, dsn
        self.data_dir = root / "fleet"
        self.settings = ServerSettings(
            data_dir=self.data_dir,
            database=DatabaseSettings(url=dsn),
            api=ApiSettings(port=free_port()),
            broker=BrokerSettings(port=free_port()),
        )
        initialize(self.settings, admin_password=ADMIN_PASSWORD)
        self.ca = FleetCA.load(self.data_dir / "ca")
        layout = BrokerLayout(self.data_dir / "broker")  # init made its certificate
        self.broker = ManagedBroker(
            layout,
            ca_file=self.ca.cert_file,
            bind="127.0.0.1",
            port=self.settings.broker.port,
            servers=[f"{SERVER_IDENTITY}.{n}" for n in names],
        )
        self.broker.configure(crl_pem=self.ca.crl_pem([], now=time.time()))
        self.broker.start()
        self.store: Store = open_store(dsn)
        self.replicas: list[Replica] = []

    def publish_models(self, packages: Path) -> None:
        """digits 1.0.0 and 2.0.0 into the shared registry and TUF repository."""
        server = FleetServer(self.settings)
        try:
            add_digits(server.artifacts, packages, ("1.0.0", "2.0.0"))
        finally:
            server.deltas.close()
            server.store.close()

    def start(self, name: str, role: str) -> Replica:
        replica = Replica(self, name, role)
        self.replicas.append(replica)
        return replica

    def lease_holder(self, lease: str) -> str | None:
        """The replica whose session holds ``lease`` now (from pg_locks), or None."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND a.application_name LIKE %s",
                (f"%lease:{lease}",),
            ).fetchone()
        if row is None:
            return None
        identity = str(row[0]).split()[1]  # "fleet-server fleet.server.<name> lease:<lease>"
        return identity.removeprefix(f"{SERVER_IDENTITY}.")

    def device_host(self) -> Any:
        """What :class:`tests.rollout_devices.SimDevice` needs of a server."""
        return SimpleNamespace(
            store=self.store,
            ca=self.ca,
            settings=SimpleNamespace(broker=SimpleNamespace(mode="managed", port=self.broker.port)),
        )

    def close(self) -> None:
        threads = [threading.Thread(target=r.end) for r in self.replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.broker.stop()
        self.store.close()


class AdminApi(Api):
    """A replica's REST API as the admin, given longer: several replicas share the machine."""

    timeout_s = 60.0

    def __init__(self, url: str) -> None:
        self.url = url
        r = httpx.post(
            f"{url}/api/v1/auth/login",
            json={"username": "admin", "password": ADMIN_PASSWORD},
            timeout=30,
        )
        r.raise_for_status()
        self.headers = {"Authorization": f"Bearer {r.json()['token']}"}
