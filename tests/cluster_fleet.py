"""A fleet server in ``broker.mode = "rabbitmq"`` on the session's local cluster, and
device links spread over its nodes (each knows every node, starting at its own)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from agent.link import DeviceLink
from agent.spool import DrainPolicy, Spool
from edgefleet_common.mqtt import Endpoint, TlsFiles
from fleet_server.config import ApiSettings, BrokerSettings, ServerSettings
from fleet_server.pki import write_private
from fleet_server.rabbitmq_local import ADMIN_USER, LocalRabbitCluster
from fleet_server.server import FleetServer, initialize

from .harness import ADMIN_PASSWORD, Pki, free_port


def cluster_settings(cluster: LocalRabbitCluster, data_dir: Path) -> ServerSettings:
    nodes = cluster.nodes
    return ServerSettings(
        data_dir=data_dir,
        api=ApiSettings(port=free_port()),
        broker=BrokerSettings(
            mode="rabbitmq",
            protocol="3.1.1",
            host="127.0.0.1",
            port=nodes[0].ports.mqtts,
            endpoints=[f"127.0.0.1:{n.ports.mqtts}" for n in nodes[1:]],
            amqp_endpoints=[f"127.0.0.1:{n.ports.amqps}" for n in nodes],
            management_urls=[cluster.management_url(i) for i in range(len(nodes))],
            admin_user=ADMIN_USER,
            admin_password=cluster.admin_password,  # type: ignore[arg-type]
        ),
    )


def cluster_server(
    cluster: LocalRabbitCluster, pki: Pki, data_dir: Path, *, start_package: bool = False
) -> FleetServer:
    """A server whose CA is the cluster's (the brokers trust the session CA); with
    ``start_package`` the federated tests' untrained model is in its models dir."""
    data_dir.mkdir(parents=True)
    shutil.copytree(pki.ca.directory, data_dir / "ca")
    settings = cluster_settings(cluster, data_dir)
    initialize(settings, admin_password=ADMIN_PASSWORD)
    if start_package:
        from .fl_helpers import write_start_package

        write_start_package(settings.data_dir / "models")
    return FleetServer(settings)


def cluster_link(
    server: FleetServer, cluster: LocalRabbitCluster, folder: Path, device_id: str, node: int
) -> DeviceLink:
    """An agent link for a device that starts on ``node`` and knows all the others."""
    server.store.create_device(device_id, name=device_id, tags={"fleet": "cl"}, now=time.time())
    server.control.admit(device_id)
    cert, key = server.ca.issue_client_cert(device_id, validity_s=3600, now=time.time())
    folder.mkdir(parents=True, exist_ok=True)
    write_private(folder / "key.pem", key)
    (folder / "cert.pem").write_bytes(cert)
    tls = TlsFiles(server.ca.cert_file, folder / "cert.pem", folder / "key.pem")
    ports = [n.ports.mqtts for n in cluster.nodes]
    order = ports[node:] + ports[:node]
    endpoint = Endpoint(
        "127.0.0.1",
        order[0],
        tls,
        protocol="3.1.1",
        keepalive=5,
        alternates=tuple(("127.0.0.1", p) for p in order[1:]),
    )
    spool = Spool(folder / "spool.db", max_bytes=10**7, max_age_s=1e6)
    return DeviceLink(
        device_id, endpoint, spool, agent_version="test", policy=DrainPolicy(200, 200, 20)
    )
