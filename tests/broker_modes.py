"""Every broker mode behind one test face, for the ACL conformance suite and the cluster tests.

A :class:`BrokerUnderTest` knows where its MQTT listeners are, which protocol its
devices speak, how to make a device identity effective (issue a certificate and,
for the cluster, create its user and rights) and how to revoke one, the way the
server's broker-control seam does for that mode.  :class:`Probe` is a bare paho
client that records CONNACK, SUBACK and PUBACK codes, deliveries and disconnects,
so checks wait on those events instead of sleeping.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from edgefleet_common.mqtt import TlsFiles
from fleet_server.broker import ManagedBroker, find_mosquitto, port_open
from fleet_server.config import SERVER_IDENTITY
from fleet_server.pki import write_private
from fleet_server.rabbitmq import RabbitAdmin
from fleet_server.rabbitmq_local import ADMIN_USER, LocalRabbitCluster

from .harness import Pki, Recorder, free_port, paho_client, wait_for


@dataclass
class BrokerUnderTest:
    mode: str
    ports: list[int]
    protocol: str
    pki: Pki
    make_effective: Callable[[str], None]
    revoke_ids: Callable[[list[TlsFiles], list[str]], None]
    revoked: list[TlsFiles] = field(default_factory=list)
    revoked_ids: list[str] = field(default_factory=list)

    def identity(self, cn: str) -> TlsFiles:
        files = self.pki.identity(cn)
        self.make_effective(cn)
        return files

    def revoke(self, cn: str, files: TlsFiles) -> None:
        self.revoked.append(files)
        self.revoked_ids.append(cn)
        self.revoke_ids(self.revoked, self.revoked_ids)

    def probe(self, tls: TlsFiles | None, client_id: str, *, node: int = 0, **kw: object) -> Probe:
        return Probe(
            tls, client_id, port=self.ports[node % len(self.ports)], protocol=self.protocol, **kw
        )  # type: ignore[arg-type]


def revocation_list(pki: Pki, files: list[TlsFiles]) -> bytes:
    """The fleet CA's CRL with the certificates of ``files`` revoked now."""
    serials = []
    for f in files:
        assert f.cert_file is not None
        cert = x509.load_pem_x509_certificate(f.cert_file.read_bytes())
        serials.append((cert.serial_number, time.time()))
    return pki.ca.crl_pem(serials, now=time.time())


def _mosquitto_under_test(
    mode: str, port: int, pki: Pki, revoke: Callable[[list[TlsFiles], list[str]], None]
) -> BrokerUnderTest:
    """mosquitto, managed or configured by hand: one port, MQTT 5, every certificate
    effective at once, and the CN is the client id."""
    return BrokerUnderTest(
        mode=mode,
        ports=[port],
        protocol="5",
        pki=pki,
        make_effective=lambda cn: None,
        revoke_ids=revoke,
    )


def mosquitto_mode(broker: ManagedBroker, pki: Pki) -> BrokerUnderTest:
    def revoke(files: list[TlsFiles], ids: list[str]) -> None:
        broker.configure(crl_pem=revocation_list(pki, files), revoked=ids)
        broker.reload()

    return _mosquitto_under_test("mosquitto", broker.port, pki, revoke)


class HandConfiguredMosquitto:
    """An "external" broker: mosquitto configured by hand as docs/operations.md says
    (fleet CA, CN as username and client id, ACL by CN, the server's CRL), run by the
    test the way an operator runs it; revocation = install the CRL, deny, reload."""

    def __init__(self, pki: Pki, directory: Path) -> None:
        self.pki = pki
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = pki.ca.issue_server_cert(["localhost"], ["127.0.0.1"], now=time.time())
        (directory / "broker.pem").write_bytes(cert)
        write_private(directory / "broker.key", key)
        self.port = free_port()
        self.write_acl([])
        (directory / "crl.pem").write_bytes(pki.ca.crl_pem([], now=time.time()))
        conf = directory / "mosquitto.conf"
        conf.write_text(
            "per_listener_settings false\nallow_anonymous false\n"
            f"acl_file {directory / 'acl'}\n"
            f"listener {self.port} 127.0.0.1\n"
            f"cafile {pki.ca.cert_file}\ncertfile {directory / 'broker.pem'}\n"
            f"keyfile {directory / 'broker.key'}\ncrlfile {directory / 'crl.pem'}\n"
            "require_certificate true\nuse_identity_as_username true\n"
            "use_username_as_clientid true\n" + ("user root\n" if os.geteuid() == 0 else "")
        )
        self.proc = subprocess.Popen(
            [find_mosquitto("mosquitto"), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=(directory / "stderr").open("wb"),
        )
        wait_for(lambda: port_open("127.0.0.1", self.port), what="hand-configured mosquitto")

    def write_acl(self, denied: list[str]) -> None:
        lines = [f"user {SERVER_IDENTITY}", "topic readwrite devices/#", ""]
        for d in denied:
            lines += [f"user {d}", "topic deny devices/#", ""]
        lines += ["pattern readwrite devices/%u/#", ""]
        (self.dir / "acl").write_text("\n".join(lines))

    def revoke(self, files: list[TlsFiles], ids: list[str]) -> None:
        (self.dir / "crl.pem").write_bytes(revocation_list(self.pki, files))
        self.write_acl(ids)
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def external_mode(broker: HandConfiguredMosquitto, pki: Pki) -> BrokerUnderTest:
    return _mosquitto_under_test("external", broker.port, pki, broker.revoke)


def cluster_admin(cluster: LocalRabbitCluster) -> RabbitAdmin:
    urls = [cluster.management_url(i) for i in range(len(cluster.nodes))]
    return RabbitAdmin(urls, ADMIN_USER, cluster.admin_password)


def rabbitmq_mode(cluster: LocalRabbitCluster, pki: Pki) -> BrokerUnderTest:
    admin = cluster_admin(cluster)
    admin.put_server(SERVER_IDENTITY)

    def revoke(files: list[TlsFiles], ids: list[str]) -> None:
        admin.remove_device(ids[-1])

    return BrokerUnderTest(
        mode="rabbitmq",
        ports=[n.ports.mqtts for n in cluster.nodes],
        protocol="3.1.1",
        pki=pki,
        make_effective=admin.put_device,
        revoke_ids=revoke,
    )


def start_cluster(pki: Pki, directory: Path) -> LocalRabbitCluster:
    cluster = LocalRabbitCluster(directory, pki.ca)
    cluster.start()
    return cluster


class Probe(Recorder):
    """A paho client for probing a broker: every protocol answer is recorded."""

    def __init__(
        self,
        tls: TlsFiles | None,
        client_id: str,
        *,
        port: int,
        protocol: str = "5",
        will: tuple[str, bytes] | None = None,
        ca_file: Path | None = None,
        clean: bool = True,
    ) -> None:
        v5 = protocol == "5"
        super().__init__(
            paho_client(
                tls,
                client_id,
                protocol=protocol,
                ca_file=ca_file,
                clean_session=None if v5 else clean,
                reconnect_on_failure=False,
            )
        )
        self.port = port
        self.disconnected = threading.Event()
        self.failed: str | None = None
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_disconnect = self._on_disconnect

    def _on_publish(self, c: object, u: object, mid: int, reason: Any, p: object) -> None:
        # "No matching subscribers" (MQTT 5) is an accepted publish too
        self.pubacks[mid] = "Success" if not reason.is_failure else str(reason)

    def _on_disconnect(self, c: object, u: object, f: object, reason: object, p: object) -> None:
        self.disconnected.set()

    def try_connect(self, timeout: float = 15.0) -> bool:
        """True when the broker accepted the connection (CONNACK success)."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            self.failed = repr(exc)
            return False
        self.client.loop_start()
        wait_for(lambda: self.connack is not None or self.disconnected.is_set(), timeout, "CONNACK")
        return self.connack == "Success" and not self.disconnected.is_set()

    def connect(self) -> Probe:
        assert self.try_connect(), f"connection refused: {self.connack} {self.failed}"
        return self

    def subscribe(self, topic_filter: str) -> bool:
        """True when granted; False when refused by SUBACK or by closing the connection."""
        _, mid = self.client.subscribe(topic_filter, qos=1)
        wait_for(lambda: mid in self.subacks or self.disconnected.is_set(), what="SUBACK")
        if mid not in self.subacks:
            return False
        return all(code.startswith("Granted") for code in self.subacks[mid])

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """True when the broker acknowledged the publish as accepted."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        wait_for(lambda: info.mid in self.pubacks or self.disconnected.is_set(), what="PUBACK")
        return self.pubacks.get(info.mid) == "Success"

    def got(self, topic: str, payload: bytes) -> bool:
        with self._lock:
            return (topic, payload) in self.messages

    def topics_seen(self) -> set[str]:
        with self._lock:
            return {t for t, _ in self.messages}

    def drop(self) -> None:
        """Close the socket without DISCONNECT: the broker publishes the Last Will."""
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        self.client.loop_stop()

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
