"""Several broker endpoints: settings, and a session that fails over to the next node."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import BrokerOverride
from agent.link import DeviceLink
from agent.spool import DrainPolicy, Spool
from edgefleet_common.backoff import Backoff
from edgefleet_common.mqtt import Endpoint, TlsFiles
from edgefleet_contract.codec import Codec
from edgefleet_contract.messages import Telemetry
from edgefleet_contract.topics import Channel
from fleet_server.broker import ManagedBroker
from fleet_server.config import BrokerSettings

from .harness import Client, Pki, wait_for


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once closed


def test_agent_endpoints_are_checked_and_become_alternates() -> None:
    b = BrokerOverride(host="a", port=1, endpoints=["b:8883", "[::1]:8884"])
    assert b.alternates() == (("b", 8883), ("::1", 8884))
    with pytest.raises(ValidationError, match="is not host:port"):
        BrokerOverride(endpoints=["no-port"])


def test_cluster_mode_names_what_it_is_missing() -> None:
    with pytest.raises(ValidationError, match=r"broker\.amqp_endpoints"):
        BrokerSettings(mode="rabbitmq", protocol="3.1.1")
    with pytest.raises(ValidationError, match=r"3\.1\.1"):
        BrokerSettings(
            mode="rabbitmq",
            amqp_endpoints=["h:5671"],
            management_urls=["http://h:15672"],
            admin_user="u",
            admin_password="p",  # type: ignore[arg-type]
        )


def test_link_fails_over_to_the_next_endpoint(
    broker: ManagedBroker, pki: Pki, identity: object, tmp_path: Path
) -> None:
    tls: TlsFiles = pki.identity("fo-1")
    server = Client(pki.server, "fleet.server")
    server.connect(broker.port)
    server.client.subscribe("devices/fo-1/telemetry", qos=1)
    dead = _closed_port()
    endpoint = Endpoint("127.0.0.1", dead, tls, alternates=(("127.0.0.1", broker.port),))
    spool = Spool(tmp_path / "spool.db", max_bytes=10**6, max_age_s=1e6)
    link = DeviceLink("fo-1", endpoint, spool, agent_version="t", policy=DrainPolicy(50, 50, 5))
    link._backoff = Backoff(initial=0.05, maximum=0.2)
    batch = Telemetry(device_id="fo-1", batch_id="b0", seq=0, ts=time.time(), window_s=1)
    link.send(Channel.TELEMETRY, Codec().encode(batch))
    link.start()
    try:
        wait_for(link.connected.is_set, what="connected through the second endpoint")
        assert link.target == ("127.0.0.1", broker.port)
        assert link.last_error is not None and str(dead) in link.last_error
        wait_for(
            lambda: any(t == "devices/fo-1/telemetry" for t, _ in server.messages),
            what="the spooled batch",
        )
    finally:
        link.stop()
        server.close()
