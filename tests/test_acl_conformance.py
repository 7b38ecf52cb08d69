"""One ACL conformance suite, run against every broker mode (managed mosquitto, an
external broker configured by hand from docs/operations.md, the RabbitMQ cluster).

A device holds a certificate whose CN is its id.  Whatever broker carries the
fleet, a device must not read or write another device's topics (any channel,
retained messages, wildcards), must not plant a Last Will on another device's
status, must not use another device's session, and a revoked certificate, a
certificate from another CA or none at all must get nothing.  Every refusal is
checked beside a positive control on the same broker, and waits on a protocol
event (PUBACK, SUBACK, a marker message published after the probe, a closed
connection), never on a sleep.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet_common.mqtt import TlsFiles
from fleet_server.broker import ManagedBroker
from fleet_server.config import SERVER_IDENTITY
from fleet_server.pki import FleetCA
from fleet_server.rabbitmq_authz import ClientIdCheck
from fleet_server.rabbitmq_local import LocalRabbitCluster

from .broker_modes import (
    BrokerUnderTest,
    HandConfiguredMosquitto,
    Probe,
    external_mode,
    mosquitto_mode,
    rabbitmq_mode,
)
from .harness import Pki, start_broker, wait_for

UPSTREAM = ("telemetry", "state", "status", "fl/out")
DOWNSTREAM = ("cmd", "fl/in")
CHANNELS = UPSTREAM + DOWNSTREAM
_ids = itertools.count()


def _id(prefix: str) -> str:
    return f"{prefix}{next(_ids)}-{time.monotonic_ns() % 100000}"


@pytest.fixture(scope="module")
def module_mosquitto(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedBroker]:
    b = start_broker(pki, tmp_path_factory.mktemp("acl-mosquitto"))
    yield b
    b.stop()


@pytest.fixture(scope="module")
def module_external(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    b = HandConfiguredMosquitto(pki, tmp_path_factory.mktemp("acl-external"))
    yield b
    b.stop()


@pytest.fixture(params=["mosquitto", "external", "rabbitmq"])
def bt(request: pytest.FixtureRequest, pki: Pki) -> Iterator[BrokerUnderTest]:
    made: list[Probe] = []
    if request.param == "mosquitto":
        mode = mosquitto_mode(request.getfixturevalue("module_mosquitto"), pki)
    elif request.param == "external":
        mode = external_mode(request.getfixturevalue("module_external"), pki)
    else:
        cluster: LocalRabbitCluster = request.getfixturevalue("rabbit")
        mode = rabbitmq_mode(cluster, pki)
    original = mode.probe

    def tracked(*a: object, **kw: object) -> Probe:
        p = original(*a, **kw)  # type: ignore[arg-type]
        made.append(p)
        return p

    mode.probe = tracked  # type: ignore[method-assign]
    yield mode
    for p in made:
        with contextlib.suppress(Exception):
            p.close()


def _server(bt: BrokerUnderTest, node: int = 0) -> Probe:
    return bt.probe(bt.pki.server, SERVER_IDENTITY, node=node).connect()


def _refused_publish(p: Probe, topic: str, payload: bytes, retain: bool = False) -> bool:
    """Refused: a failure PUBACK (MQTT 5) or the connection closed (RabbitMQ)."""
    return not p.publish(topic, payload, retain=retain)


def test_device_cannot_publish_on_another_devices_topics(bt: BrokerUnderTest) -> None:
    a, b = _id("pa"), _id("pb")
    a_tls, b_tls = bt.identity(a), bt.identity(b)
    observer = _server(bt)
    assert observer.subscribe(f"devices/{b}/#")
    victim = bt.probe(b_tls, b, node=1).connect()
    for ch in DOWNSTREAM:
        assert victim.subscribe(f"devices/{b}/{ch}")
    for ch in CHANNELS:
        forged = f"forged-{ch}".encode()
        attacker = bt.probe(a_tls, a, node=2).connect()
        assert _refused_publish(attacker, f"devices/{b}/{ch}", forged, retain=ch == "status")
        attacker.close()
        # positive control: the rightful publisher on the same topic gets through
        real = f"real-{ch}".encode()
        sender, watcher = (victim, observer) if ch in UPSTREAM else (observer, victim)
        assert sender.publish(f"devices/{b}/{ch}", real)
        topic = f"devices/{b}/{ch}"
        wait_for(lambda w=watcher, t=topic, r=real: w.got(t, r), what=f"{ch} positive control")
        assert not observer.got(f"devices/{b}/{ch}", forged), ch
        assert not victim.got(f"devices/{b}/{ch}", forged), ch


FILTERS = (
    "#",
    "devices/+/#",
    "devices/{b}/#",
    "devices/+/status",
    "devices/{b}/status",
    "devices/{b}/state",
    "devices/{b}/telemetry",
    "devices/{b}/cmd",
    "devices/{b}/fl/in",
    "devices/{b}/fl/out",
)


def test_device_cannot_subscribe_to_another_devices_topics(bt: BrokerUnderTest) -> None:
    a, b = _id("sa"), _id("sb")
    a_tls, b_tls = bt.identity(a), bt.identity(b)
    server = _server(bt)
    victim = bt.probe(b_tls, b).connect()
    # retained state of the victim, on the node the attacker will use
    assert victim.publish(f"devices/{b}/status", b"retained-status", retain=True)
    assert victim.publish(f"devices/{b}/state", b"retained-state", retain=True)
    # positive control: the server may read it, retained copy included
    reader = server  # one session per identity: mosquitto forces the client id to the CN
    assert reader.subscribe(f"devices/{b}/status")
    wait_for(lambda: reader.got(f"devices/{b}/status", b"retained-status"), what="retained")
    for pattern in FILTERS:
        topic_filter = pattern.format(b=b)
        attacker = bt.probe(a_tls, a).connect()
        assert attacker.subscribe(f"devices/{a}/cmd"), "a device may read its own commands"
        granted = attacker.subscribe(topic_filter)
        if granted:
            # mosquitto grants a forbidden filter but delivers nothing through it: prove
            # it with traffic published before a marker the attacker may receive
            for ch in DOWNSTREAM:
                assert server.publish(f"devices/{b}/{ch}", b"secret")
            assert victim.publish(f"devices/{b}/telemetry", b"secret")
            assert server.publish(f"devices/{a}/cmd", b"marker")
            wait_for(lambda p=attacker: p.got(f"devices/{a}/cmd", b"marker"), what="marker")
        seen = attacker.topics_seen() - {f"devices/{a}/cmd"}
        assert not seen, f"{topic_filter} leaked {seen}"
        attacker.close()


def test_last_will_on_another_devices_status_is_not_published(bt: BrokerUnderTest) -> None:
    a, b = _id("wa"), _id("wb")
    a_tls, b_tls = bt.identity(a), bt.identity(b)
    observer = _server(bt)
    assert observer.subscribe("devices/+/status")
    forger = bt.probe(a_tls, a, will=(f"devices/{b}/status", b"forged-will"))
    if forger.try_connect():
        forger.drop()
    # positive control: the device's own Last Will is published when it drops
    honest = bt.probe(b_tls, b, will=(f"devices/{b}/status", b"real-will")).connect()
    honest.drop()
    wait_for(lambda: observer.got(f"devices/{b}/status", b"real-will"), what="real will")
    assert not observer.got(f"devices/{b}/status", b"forged-will")


def test_client_id_takeover(bt: BrokerUnderTest) -> None:
    a, b = _id("ta"), _id("tb")
    a_tls, b_tls = bt.identity(a), bt.identity(b)
    server = _server(bt)
    victim = bt.probe(b_tls, b, node=1, clean=False).connect()
    assert victim.subscribe(f"devices/{b}/cmd")
    impostor = bt.probe(a_tls, b, node=2, clean=False)
    accepted = impostor.try_connect()
    assert not (accepted and bt.mode == "rabbitmq"), "the cluster took a claimed client id"
    if accepted:
        # accepted only under its own identity: nothing of the victim's reaches it
        assert _refused_publish(impostor, f"devices/{b}/telemetry", b"impostor") or (
            bt.mode == "mosquitto"
        )
    assert server.publish(f"devices/{b}/cmd", b"for-the-victim")
    # the victim keeps its session: mosquitto forces the client id to the CN, the
    # cluster's client-id check refuses the impostor before the id is registered
    wait_for(lambda: victim.got(f"devices/{b}/cmd", b"for-the-victim"), what="victim cmd")
    assert not victim.disconnected.is_set()
    assert not impostor.got(f"devices/{b}/cmd", b"for-the-victim")


def test_revoked_certificate_open_session_and_reconnect(bt: BrokerUnderTest) -> None:
    r, k = _id("rv"), _id("rk")
    r_tls, k_tls = bt.identity(r), bt.identity(k)
    server = _server(bt)
    revoked = bt.probe(r_tls, r, node=1).connect()
    kept = bt.probe(k_tls, k, node=1).connect()
    assert revoked.subscribe(f"devices/{r}/cmd") and kept.subscribe(f"devices/{k}/cmd")
    assert revoked.publish(f"devices/{r}/telemetry", b"before")
    bt.revoke(r, r_tls)

    def cut_off() -> bool:
        return revoked.disconnected.is_set() or not revoked.publish(f"devices/{r}/telemetry", b"x")

    wait_for(cut_off, what="the revoked device's open session to be refused")
    assert server.publish(f"devices/{r}/cmd", b"too-late")
    assert server.publish(f"devices/{k}/cmd", b"still-here")
    wait_for(lambda: kept.got(f"devices/{k}/cmd", b"still-here"), what="bystander's command")
    assert not revoked.got(f"devices/{r}/cmd", b"too-late")
    # a new connection with the revoked certificate is refused; the bystander's works
    assert not bt.probe(r_tls, r, node=2).try_connect()
    kept.close()
    assert bt.probe(k_tls, k, node=2).try_connect()


def test_certificate_from_another_ca_and_no_certificate(
    bt: BrokerUnderTest, tmp_path: Path
) -> None:
    d = _id("ca")
    real = bt.identity(d)
    assert bt.probe(real, d).try_connect(), "positive control: the fleet's certificate"
    rogue_ca = FleetCA.create(tmp_path / "rogue", now=time.time())
    rogue = bt.pki.identity(d, ca=rogue_ca)
    forged = TlsFiles(real.ca_file, rogue.cert_file, rogue.key_file)
    assert not bt.probe(forged, d).try_connect()
    assert not bt.probe(None, d, ca_file=real.ca_file).try_connect()


def test_the_cluster_refuses_logins_while_its_client_id_check_is_down(
    rabbit: LocalRabbitCluster, pki: Pki
) -> None:
    """The check fails closed: unreachable, no device logs in; back, the same one does."""
    bt = rabbitmq_mode(rabbit, pki)
    device = _id("fc")
    tls = bt.identity(device)
    host, port = rabbit.client_id_check.url.removeprefix("http://").split(":")
    rabbit.client_id_check.stop()
    probes = [bt.probe(tls, device)]
    try:
        assert not probes[0].try_connect(), "a login went through without the check"
    finally:
        rabbit.client_id_check = ClientIdCheck(host, int(port)).start()
    probes.append(bt.probe(tls, device).connect())
    for p in probes:
        p.close()
