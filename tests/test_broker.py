"""The managed broker, exercised for real: mTLS, ACL confinement, CRL, self-healing."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509

from edgefleet_common.mqtt import TlsFiles
from fleet_server.broker import ManagedBroker, port_open
from fleet_server.pki import FleetCA

from .harness import Client, Pki, free_port, start_broker, wait_for


def test_device_confined_to_its_own_tree(
    broker: ManagedBroker,
    identity: Callable[..., TlsFiles],
    pki: Pki,
    mqtt_client: Callable[..., Client],
) -> None:
    server = mqtt_client(pki.server, "fleet.server")
    server.connect(broker.port)
    assert server.subscribe("devices/#") == ["Granted QoS 1"]
    alice = mqtt_client(identity("acl-alice"), "acl-alice")
    alice.connect(broker.port)
    bob = mqtt_client(identity("acl-bob"), "acl-bob")
    bob.connect(broker.port)
    alice.subscribe("devices/acl-bob/#")  # granted by v5 but must deliver nothing
    alice.subscribe("devices/acl-alice/cmd")

    # The forged message goes first: one client's messages arrive in order, so once the
    # server has "mine" it would already have "forged" had the broker let it through.
    other = alice.client.publish("devices/acl-bob/telemetry", b"forged", qos=1)
    own = alice.client.publish("devices/acl-alice/telemetry", b"mine", qos=1)
    wait_for(lambda: own.mid in alice.pubacks and other.mid in alice.pubacks, what="PUBACKs")
    assert alice.pubacks[own.mid] == "Success"
    assert alice.pubacks[other.mid] == "Not authorized"

    server.client.publish("devices/acl-bob/cmd", b"for bob", qos=1)
    server.client.publish("devices/acl-alice/cmd", b"for alice", qos=1)
    wait_for(lambda: ("devices/acl-alice/cmd", b"for alice") in alice.messages, what="own cmd")
    wait_for(lambda: ("devices/acl-alice/telemetry", b"mine") in server.messages, what="server rx")
    assert all(not t.startswith("devices/acl-bob") for t, _ in alice.messages)
    assert ("devices/acl-bob/telemetry", b"forged") not in server.messages


def _refused(port: int, make: Callable[[], Client]) -> bool:
    client = make()
    try:
        client.client.connect("127.0.0.1", port, keepalive=5)
    except (ssl.SSLError, OSError):
        return True
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rc = client.client.loop(0.1)
        if rc != paho.MQTT_ERR_SUCCESS:
            return True
        if client.connack is not None:
            return client.connack != "Success"
    return True


def test_clients_without_valid_certificates_are_refused(
    broker: ManagedBroker,
    pki: Pki,
    tmp_path: Path,
) -> None:
    assert _refused(broker.port, lambda: Client(None, "anon", ca_file=pki.ca.cert_file))
    rogue_ca = FleetCA.create(tmp_path / "rogue", now=time.time())
    rogue = pki.identity("acl-rogue", ca=rogue_ca)
    assert _refused(broker.port, lambda: Client(rogue, "acl-rogue"))
    # and the good path works, so the refusals above are not a broken broker
    assert not _refused(broker.port, lambda: Client(pki.identity("acl-good"), "acl-good"))


def test_revocation_applies_without_a_restart(
    fresh_broker: ManagedBroker,
    pki: Pki,
    mqtt_client: Callable[..., Client],
) -> None:
    server = mqtt_client(pki.server, "fleet.server")
    server.connect(fresh_broker.port)
    server.client.subscribe("devices/+/telemetry", qos=1)
    ident = pki.identity("rev-1")
    victim = mqtt_client(ident, "rev-1")
    victim.connect(fresh_broker.port)
    victim.client.subscribe("devices/rev-1/#", qos=1)
    bystander = mqtt_client(pki.identity("rev-2"), "rev-2")
    bystander.connect(fresh_broker.port)
    bystander.client.subscribe("devices/rev-2/cmd", qos=1)
    before = victim.client.publish("devices/rev-1/telemetry", b"before", qos=1)
    wait_for(lambda: before.mid in victim.pubacks, what="PUBACK before revocation")
    assert victim.pubacks[before.mid] == "Success"

    assert ident.cert_file is not None
    serial = x509.load_pem_x509_certificate(ident.cert_file.read_bytes()).serial_number
    pid = fresh_broker.pid
    fresh_broker.configure(
        crl_pem=pki.ca.crl_pem([(serial, time.time())], now=time.time()), revoked=["rev-1"]
    )
    fresh_broker.reload()

    # the open connection is denied everything once the broker has handled the signal
    attempts: list[bytes] = []

    def denied() -> bool:
        attempts.append(f"after-{len(attempts)}".encode())
        m = victim.client.publish("devices/rev-1/telemetry", attempts[-1], qos=1)
        wait_for(lambda: m.mid in victim.pubacks, what="PUBACK after revocation")
        return victim.pubacks[m.mid] == "Not authorized"

    wait_for(denied, what="the revoked device's publish to be refused")
    server.client.publish("devices/rev-1/cmd", b"too late", qos=1)
    server.client.publish("devices/rev-2/cmd", b"still here", qos=1)
    # a new connection with the revoked certificate fails the TLS handshake
    assert _refused(fresh_broker.port, lambda: Client(ident, "rev-1-again"))
    # and the rest of the fleet kept its connections: same process, nobody kicked
    assert fresh_broker.pid == pid and fresh_broker.restarts == 0
    assert bystander.client.is_connected()
    bystander.client.publish("devices/rev-2/telemetry", b"fine", qos=1)
    wait_for(lambda: ("devices/rev-2/telemetry", b"fine") in server.messages, what="server rx")
    # the broker handled the server's two publishes in order: rev-2 got its one, rev-1 nothing
    wait_for(lambda: ("devices/rev-2/cmd", b"still here") in bystander.messages, what="rev-2 cmd")
    assert ("devices/rev-1/cmd", b"too late") not in victim.messages
    assert ("devices/rev-1/telemetry", attempts[-1]) not in server.messages


def test_broker_restarts_after_kill_and_clients_reconnect(
    fresh_broker: ManagedBroker,
    pki: Pki,
) -> None:
    from edgefleet_common.mqtt import Endpoint, MqttSession

    session = MqttSession(
        "heal-1", Endpoint("127.0.0.1", fresh_broker.port, pki.identity("heal-1"))
    )
    session.start()
    try:
        assert session.wait_connected(10)
        first_pid = fresh_broker.pid
        fresh_broker.kill_hard()
        wait_for(
            lambda: fresh_broker.restarts >= 1 and fresh_broker.pid != first_pid,
            what="broker restart",
        )
        wait_for(lambda: session.link_stats.connects >= 2, timeout=30, what="client reconnect")
        assert session.connected.is_set()
    finally:
        session.stop()


def test_missing_mosquitto_is_a_clear_error() -> None:
    from edgefleet_contract.errors import BrokerError
    from fleet_server.broker import find_mosquitto

    with pytest.raises(BrokerError, match="apt-get install mosquitto"):
        find_mosquitto("no-such-mosquitto-binary")
    assert free_port() > 0


def test_a_broker_left_by_a_killed_server_is_ended_before_a_new_one_starts(
    pki: Pki, tmp_path: Path
) -> None:
    import subprocess

    from fleet_server.broker import BrokerLayout, find_mosquitto

    first = start_broker(pki, tmp_path / "broker")
    port, layout = first.port, first.layout
    first.stop()
    assert not layout.pid_file.exists()  # a clean stop leaves nothing to clean up
    # What a SIGKILLed server leaves: its mosquitto (own session) and the pid file.
    orphan = subprocess.Popen(
        [find_mosquitto("mosquitto"), "-c", str(layout.conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        layout.pid_file.write_text(f"{orphan.pid}\n")
        wait_for(lambda: port_open("127.0.0.1", port), what="the orphan listening")
        second = ManagedBroker(
            BrokerLayout(layout.directory), ca_file=pki.ca.cert_file, bind="127.0.0.1", port=port
        )
        second.configure(crl_pem=pki.ca.crl_pem([], now=time.time()))
        second.start()
        try:
            assert orphan.wait(10) is not None  # ended by the new server, not by this test
            assert second.pid != orphan.pid and second.wait_ready(10)
            assert layout.pid_file.read_text().strip() == str(second.pid)
        finally:
            second.stop()
    finally:
        if orphan.poll() is None:
            orphan.kill()
