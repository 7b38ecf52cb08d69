"""A RabbitMQ cluster on this host, on its own loopback ports and data directories.

For tests, benchmarks and trying the clustered mode on one machine: each node has
its own node name, AMQP, distribution, MQTT-over-TLS and management ports, data
and log directories, and the cluster shares one Erlang cookie (kept in a ``HOME``
of its own, so the system's RabbitMQ and its cookie are never touched).  The nodes
start in parallel and form the cluster themselves (classic peer discovery).  A
production cluster is run by its operator (docs/operations.md); the server only
talks to it through :mod:`fleet_server.rabbitmq`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from edgefleet_common.ports import free_port as _free_port
from edgefleet_contract.errors import BrokerError

from . import rabbitmq_authz
from .pki import FleetCA, write_private

PLUGINS = (
    f"[rabbitmq_mqtt,rabbitmq_management,rabbitmq_auth_mechanism_ssl,{rabbitmq_authz.PLUGIN}].\n"
)
ADMIN_USER = "fleet-admin"
"""The management user the local cluster is created with (password random per cluster)."""


PROBE_USER = "cluster-probe"
"""A user with no rights, whose only use is checking that each node takes MQTT logins."""


def _mqtt_connack(port: int, ctx: ssl.SSLContext) -> bytes:
    """CONNECT (MQTT 3.1.1, clean session) and return the CONNACK bytes (b"" on failure)."""
    client_id = PROBE_USER.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x1e" + len(client_id).to_bytes(2, "big") + client_id
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(bytes([0x10, len(body)]) + body)
            answer = b""
            while len(answer) < 4:
                chunk = tls.recv(4 - len(answer))
                if not chunk:
                    break
                answer += chunk
            return answer
    except (OSError, ssl.SSLError):
        return b""


def find_rabbitmq() -> Path:
    """The RabbitMQ start script that runs as the calling user (Debian: rabbitmq-server)."""
    for candidate in ("/usr/lib/rabbitmq/bin/rabbitmq-server",):
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise BrokerError(
            "cannot find rabbitmq-server; install it (Debian/Ubuntu: apt-get install "
            "rabbitmq-server) or use another broker.mode"
        )
    return Path(found)


@dataclass(frozen=True)
class NodePorts:
    amqps: int
    dist: int
    mqtts: int
    management: int
    amqp_internal: int

    @classmethod
    def pick(cls) -> NodePorts:
        return cls(_free_port(), _free_port(), _free_port(), _free_port(), _free_port())


class LocalNode:
    """One node: its directory, ports and process."""

    def __init__(self, cluster: LocalRabbitCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"{cluster.tag}{index}@localhost"
        self.directory = cluster.directory / f"node{index}"
        self.ports = NodePorts.pick()
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        c = self.cluster
        peers = "\n".join(
            f"cluster_formation.classic_config.nodes.{n.index + 1} = {n.name}" for n in c.nodes
        )
        p = self.ports
        return f"""# generated for a local test cluster
listeners.tcp = none
listeners.ssl.default = 127.0.0.1:{p.amqps}
ssl_options.cacertfile = {c.ca.cert_file}
ssl_options.certfile = {c.cert}
ssl_options.keyfile = {c.key}
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
ssl_options.versions.1 = tlsv1.2
ssl_cert_login_from = common_name
auth_mechanisms.1 = EXTERNAL
auth_mechanisms.2 = PLAIN
mqtt.listeners.tcp = none
mqtt.listeners.ssl.default = 127.0.0.1:{p.mqtts}
mqtt.ssl_cert_login = true
mqtt.allow_anonymous = false
mqtt.vhost = /
mqtt.exchange = amq.topic
mqtt.durable_queue_type = quorum
management.tcp.port = {p.management}
management.tcp.ip = 127.0.0.1
loopback_users = none
default_user = {ADMIN_USER}
default_pass = {c.admin_password}
cluster_formation.peer_discovery_backend = classic_config
{peers}
cluster_partition_handling = pause_minority
log.file.level = warning
log.console = false
""" + rabbitmq_authz.node_config(c.client_id_check.url)

    def env(self) -> dict[str, str]:
        d = self.directory
        return dict(
            os.environ,
            HOME=str(self.cluster.home),
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.ports.amqp_internal),
            RABBITMQ_DIST_PORT=str(self.ports.dist),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 1:1 +A 4",
        )

    def start(self) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq.conf").write_text(self.config())
        (d / "advanced.config").write_text(rabbitmq_authz.ADVANCED_CONFIG)
        (d / "enabled_plugins").write_text(PLUGINS)
        out = (d / "stdout.log").open("ab")
        self.proc = subprocess.Popen(
            [str(self.cluster.binary)],
            env=self.env(),
            cwd=d,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill_hard(self) -> None:
        """SIGKILL the whole node (the Erlang VM and its helpers), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, lines: int = 15) -> str:
        out: list[str] = []
        for path in [*sorted(self.directory.glob("log/*.log")), self.directory / "stdout.log"]:
            if path.exists():
                out += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)


class LocalRabbitCluster:
    """``size`` RabbitMQ nodes on loopback with mTLS MQTT and AMQP listeners.

    The broker certificate is issued by ``ca`` (the fleet CA), so devices and the
    server verify it the way they verify the managed mosquitto.  The nodes share one
    client-id checker (:mod:`fleet_server.rabbitmq_authz`), run in this process on a
    free loopback port; a production cluster runs one beside each node.
    """

    def __init__(self, directory: Path, ca: FleetCA, *, size: int = 3) -> None:
        self.directory = directory
        self.ca = ca
        self.binary = find_rabbitmq()
        self.tag = f"ef{secrets.token_hex(3)}n"
        self.home = directory / "home"
        self.cert = directory / "broker.pem"
        self.key = directory / "broker.key"
        self.admin_password = secrets.token_urlsafe(16)
        self.nodes = [LocalNode(self, i) for i in range(size)]
        self.client_id_check = rabbitmq_authz.ClientIdCheck()

    def start(self, timeout: float = 240.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True, mode=0o700)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        cert, key = self.ca.issue_server_cert(["localhost"], ["127.0.0.1"], now=time.time())
        self.cert.write_bytes(cert)
        write_private(self.key, key)
        deadline = time.monotonic() + timeout
        self.client_id_check.start()
        try:
            # One node after the other: started together, the nodes sometimes formed
            # the MQTT plugin's client-id registry (a Ra cluster) without one of them,
            # and that node then refused every MQTT connection ("client ID
            # registration timed out").
            for count, node in enumerate(self.nodes, start=1):
                node.start()
                self.wait_running(count, max(1.0, deadline - time.monotonic()))
            for node in self.nodes:
                self.check_mqtt(node, max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        (self.directory / "cluster.json").write_text(json.dumps(self.describe(), indent=2))

    def describe(self) -> dict[str, object]:
        return {
            "nodes": [
                {
                    "name": n.name,
                    "mqtts": n.ports.mqtts,
                    "amqps": n.ports.amqps,
                    "management": n.ports.management,
                }
                for n in self.nodes
            ],
            "admin_user": ADMIN_USER,
            "client_id_check": self.client_id_check.url,
        }

    def management_url(self, node: int = 0) -> str:
        return f"http://127.0.0.1:{self.nodes[node].ports.management}"

    def running_nodes(self) -> int:
        """Nodes the cluster reports running, asked through any live node's management API."""
        for node in self.nodes:
            if not node.alive():
                continue
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{node.ports.management}/api/nodes",
                    auth=(ADMIN_USER, self.admin_password),
                    timeout=5,
                )
                if r.status_code == 200:
                    return sum(1 for n in r.json() if n.get("running"))
            except httpx.HTTPError:
                continue
        return 0

    def wait_running(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n in self.nodes if n.proc is not None and n.proc.poll() is not None]
            if dead and len(dead) > len(self.nodes) - count:
                raise BrokerError(f"rabbitmq node {dead[0].name} exited:\n{dead[0].log_tail()}")
            if self.running_nodes() >= count and all(
                self._listening(n) for n in self.nodes if n.alive()
            ):
                return
            time.sleep(0.5)
        raise BrokerError(
            f"the local rabbitmq cluster did not reach {count} running nodes in {timeout:.0f}s:\n"
            + self.nodes[0].log_tail()
        )

    def check_mqtt(self, node: LocalNode, timeout: float) -> None:
        """An MQTT CONNECT through ``node`` must be accepted (the registry works there)."""
        from edgefleet_common.mqtt import TlsFiles, tls_context

        api = f"http://127.0.0.1:{node.ports.management}/api"
        auth = (ADMIN_USER, self.admin_password)
        httpx.put(
            f"{api}/users/{PROBE_USER}",
            json={"password_hash": "", "tags": ""},
            auth=auth,
            timeout=30,
        ).raise_for_status()
        httpx.put(
            f"{api}/permissions/%2F/{PROBE_USER}",
            json={"configure": "^$", "write": "^$", "read": "^$"},
            auth=auth,
            timeout=30,
        ).raise_for_status()
        probe = self.directory / "probe"
        if not probe.exists():
            probe.mkdir(mode=0o700)
            cert, key = self.ca.issue_client_cert(PROBE_USER, validity_s=3600, now=time.time())
            (probe / "cert.pem").write_bytes(cert)
            write_private(probe / "key.pem", key)
        ctx = tls_context(TlsFiles(self.ca.cert_file, probe / "cert.pem", probe / "key.pem"))
        deadline = time.monotonic() + timeout
        answer = b""
        while time.monotonic() < deadline:
            answer = _mqtt_connack(node.ports.mqtts, ctx)
            if answer[3:4] == b"\x00":
                return
            time.sleep(1.0)
        raise BrokerError(
            f"rabbitmq node {node.name} does not accept MQTT connections (CONNACK "
            f"{answer!r}):\n{node.log_tail()}"
        )

    @staticmethod
    def _listening(node: LocalNode) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", node.ports.mqtts), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.client_id_check.stop()
