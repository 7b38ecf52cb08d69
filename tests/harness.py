"""Test harness pieces (imported by conftest and by tests): PKI, broker, paho client."""

from __future__ import annotations

import contextlib
import itertools
import os
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.link import DeviceLink
from agent.spool import DrainPolicy, Spool
from edgefleet_common.mqtt import Endpoint, TlsFiles, tls_context
from edgefleet_common.ports import free_port as free_port  # the tests take their ports here
from edgefleet_common.ports import port_is_free
from fleet_server.broker import BrokerLayout, ManagedBroker
from fleet_server.config import SERVER_IDENTITY
from fleet_server.pki import FleetCA, write_private

if TYPE_CHECKING:
    import httpx

    from agent.metrics import InferenceRecorder
    from edgefleet_contract.messages import InferenceStats, SystemStats, Telemetry
    from fleet_server.server import FleetServer


HTTP_TIMEOUT = 60.0
"""For requests to a real server under test: a hang detector, not a latency check
(httpx's 5 s default fails a login's password hash on a loaded 2-core machine)."""


def wait_ports_free(*ports: int, timeout: float = 30.0) -> None:
    """Before a restart on the same ports: wait until the old listeners are gone,
    so the new server binds them (servers bind with ``SO_REUSEADDR``)."""
    wait_for(
        lambda: all(port_is_free(p, reuse=True) for p in ports),
        timeout=timeout,
        what=f"ports {', '.join(map(str, ports))} released by the stopped server",
    )


def require(found: object, what: str, install: str) -> None:
    """Fail, saying how to install it, when a part the suite runs for real is missing.

    Everything a test needs is installed by `make setup` (the dev extra, `.ci/setup-system`,
    `make thirdparty-wheels`), so a missing part is a broken setup: a skip would let CI pass
    with the behaviour untested.
    """
    if not found:
        import pytest

        pytest.fail(f"{what} is missing: {install}", pytrace=False)


def watch_subacks(session: Any) -> threading.Event:
    """Set once the broker granted every subscription of an MQTT session (its SUBACK).

    Install before ``session.start()``: a test then publishes only once the server listens,
    a condition instead of a sleep.
    """
    granted = threading.Event()

    def on_subscribe(c: object, u: object, mid: int, reasons: list[Any], p: object) -> None:
        if reasons and not any(r.is_failure for r in reasons):
            granted.set()

    session._client.on_subscribe = on_subscribe
    return granted


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 20.0,
    what: str = "condition",
    *,
    interval: float = 0.05,
) -> None:
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds.

    The benchmarks use it too; one that times the moment the condition holds polls
    with a shorter ``interval``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Pki:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = FleetCA.create(directory / "ca", now=time.time())
        self.server = self.identity(SERVER_IDENTITY)

    def identity(self, cn: str, *, validity_s: float = 3600, ca: FleetCA | None = None) -> TlsFiles:
        authority = ca or self.ca
        cert, key = authority.issue_client_cert(cn, validity_s=validity_s, now=time.time())
        folder = self.directory / "ids" / f"{cn}-{os.urandom(3).hex()}"
        folder.mkdir(parents=True)
        write_private(folder / "key.pem", key)
        (folder / "cert.pem").write_bytes(cert)
        return TlsFiles(self.ca.cert_file, folder / "cert.pem", folder / "key.pem")


def start_broker(pki: Pki, directory: Path) -> ManagedBroker:
    layout = BrokerLayout(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = pki.ca.issue_server_cert(["localhost"], ["127.0.0.1"], now=time.time())
    layout.cert.write_bytes(cert)
    write_private(layout.key, key)
    broker = ManagedBroker(layout, ca_file=pki.ca.cert_file, bind="127.0.0.1", port=free_port())
    broker.configure(crl_pem=pki.ca.crl_pem([], now=time.time()))
    broker.start()
    return broker


def paho_client(
    tls: TlsFiles | None,
    client_id: str,
    *,
    protocol: str = "5",
    ca_file: Path | None = None,
    **options: Any,
) -> paho.Client:
    """A bare paho client (callback API 2) speaking MQTT ``protocol``: with a device
    identity, or trusting ``ca_file`` only (no client certificate), or in the clear."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311,
        **options,
    )
    if tls is not None:
        client.tls_set_context(tls_context(tls))
    elif ca_file is not None:
        client.tls_set_context(ssl.create_default_context(cafile=str(ca_file)))
    return client


class Recorder:
    """What a paho client heard: its CONNACK, the messages, and the SUBACK and PUBACK codes.

    The base of :class:`Client` here and of ``broker_modes.Probe``.
    """

    def __init__(self, client: paho.Client) -> None:
        self.client = client
        self.messages: list[tuple[str, bytes]] = []
        self.pubacks: dict[int, str] = {}
        self.subacks: dict[int, list[str]] = {}
        self.connack: str | None = None
        self._lock = threading.Lock()
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish

    def _on_connect(self, c: object, u: object, f: object, reason: object, p: object) -> None:
        self.connack = str(reason)

    def _on_message(self, c: object, u: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def _on_publish(self, c: object, u: object, mid: int, reason: Any, p: object) -> None:
        self.pubacks[mid] = str(reason)

    def _on_subscribe(self, c: object, u: object, mid: int, reasons: list[Any], p: object) -> None:
        self.subacks[mid] = [str(r) for r in reasons]


class Client(Recorder):
    """A bare paho v5 client for tests: records messages and PUBACK reason codes."""

    def __init__(
        self,
        tls: TlsFiles | None,
        client_id: str,
        *,
        ca_file: Path | None = None,
        protocol: str = "5",
    ) -> None:
        super().__init__(paho_client(tls, client_id, protocol=protocol, ca_file=ca_file))

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> list[str]:
        """Subscribe and wait for the broker's SUBACK; its reason codes."""
        _, mid = self.client.subscribe(topic, qos=qos)
        wait_for(lambda: mid in self.subacks, timeout, f"SUBACK for {topic}")
        return self.subacks[mid]

    def connect(self, port: int, timeout: float = 10.0) -> None:
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        wait_for(lambda: self.connack is not None, timeout, "CONNACK")
        assert self.connack == "Success", self.connack

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def server_settings(data_dir: Path) -> object:
    """Settings for a real fleet server on free loopback ports."""
    from fleet_server.config import ApiSettings, BrokerSettings, ServerSettings

    return ServerSettings(
        data_dir=data_dir,
        api=ApiSettings(port=free_port(), login_attempts_per_minute=5),
        broker=BrokerSettings(port=free_port()),
    )


ADMIN_PASSWORD = "admin-password-1"


def system_stats(power: str | None = None, **figures: float) -> SystemStats:
    """A device's system figures: small and fixed but for the ones a test names.

    ``power`` left out keeps the contract's default (the agent did not say).
    """
    from edgefleet_contract.messages import SystemStats

    fields: dict[str, object] = {
        "cpu_percent": 1,
        "mem_used_bytes": 1,
        "mem_total_bytes": 2,
        "rss_bytes": 1,
        "disk_used_bytes": 1,
        "disk_total_bytes": 2,
        "uptime_s": 1,
    }
    fields.update(figures)
    if power is not None:
        fields["power"] = power
    return SystemStats.model_validate(fields)


def inference_stats(**fields: object) -> InferenceStats:
    """A window of ``digits`` 1.0.0 answers (10, no errors) but for the fields a test names."""
    from edgefleet_contract.messages import InferenceStats

    base: dict[str, object] = {
        "model": "digits",
        "version": "1.0.0",
        "count": 10,
        "errors": 0,
        "throughput_per_s": 10,
    }
    return InferenceStats.model_validate({**base, **fields})


def digits_recorder(**drift: Any) -> InferenceRecorder:
    """The agent's recorder for digits 1.0.0 answers (labels ``0``..``9``); ``drift`` is
    its drift set-up (``reference``, ``pca``, ``min_drift_samples``), none by default."""
    from agent.metrics import InferenceRecorder

    return InferenceRecorder("digits", "1.0.0", labels=[str(i) for i in range(10)], **drift)


def nth_batch(device_id: str, n: int, ts: float, *, window_s: float, **parts: Any) -> Telemetry:
    """The device's ``n``-th telemetry batch: batch id ``b{n}`` and sequence number ``n``
    (a store keeps one row per batch id), with the ``parts`` (system, inference, ...) named."""
    from edgefleet_contract.messages import Telemetry

    return Telemetry(
        device_id=device_id, batch_id=f"b{n}", seq=n, ts=ts, window_s=window_s, **parts
    )


def admin_token(api_url: str) -> str:
    import httpx

    r = httpx.post(
        f"{api_url}/api/v1/auth/login",
        json={"username": "admin", "password": ADMIN_PASSWORD},
        timeout=HTTP_TIMEOUT,
    )
    r.raise_for_status()
    return str(r.json()["token"])


def get_twin(api_url: str, headers: Mapping[str, str], device_id: str) -> httpx.Response:
    """``GET /devices/{id}/twin`` of a running server: desired, reported and their status."""
    import httpx

    url = f"{api_url}/api/v1/devices/{device_id}/twin"
    return httpx.get(url, headers=dict(headers), timeout=HTTP_TIMEOUT)


def put_desired(
    api_url: str, headers: Mapping[str, str], device_id: str, body: dict[str, Any]
) -> httpx.Response:
    """``PUT /devices/{id}/twin/desired`` of a running server: what the device should run."""
    import httpx

    url = f"{api_url}/api/v1/devices/{device_id}/twin/desired"
    return httpx.put(url, json=body, headers=dict(headers), timeout=HTTP_TIMEOUT)


def fleet_link(
    server: FleetServer, folder: Path, device_id: str, *, agent_version: str = "test", **kw: Any
) -> DeviceLink:
    """The agent's own MQTT link (mTLS, spool) for ``device_id``, certified by ``server``'s CA.

    The key, certificate and spool go in ``folder``; the link is not started.
    ``kw`` goes to :class:`DeviceLink` (``on_frame``, ``on_command``).
    """
    cert, key = server.ca.issue_client_cert(device_id, validity_s=3600, now=time.time())
    folder.mkdir(parents=True, exist_ok=True)
    write_private(folder / "key.pem", key)
    (folder / "cert.pem").write_bytes(cert)
    tls = TlsFiles(server.ca.cert_file, folder / "cert.pem", folder / "key.pem")
    spool = Spool(folder / "spool.db", max_bytes=10**7, max_age_s=1e6)
    endpoint = device_endpoint(server, device_id, tls)
    policy = DrainPolicy(200, 200, 20)
    return DeviceLink(device_id, endpoint, spool, agent_version=agent_version, policy=policy, **kw)


_next_node = itertools.count()


def device_endpoint(server: FleetServer, device_id: str, tls: TlsFiles) -> Endpoint:
    """Where a test device connects; on a broker cluster, round-robin over its nodes
    (each device knows all of them), after making the device's identity effective."""
    b = server.settings.broker
    if b.mode != "rabbitmq":
        return Endpoint("127.0.0.1", b.port, tls, keepalive=10)
    server.control.admit(device_id)
    nodes = [("127.0.0.1", b.port)] + [
        (host, int(port)) for host, _, port in (e.rpartition(":") for e in b.endpoints)
    ]
    start = next(_next_node) % len(nodes)
    order = nodes[start:] + nodes[:start]
    return Endpoint(*order[0], tls, protocol="3.1.1", keepalive=10, alternates=tuple(order[1:]))


def run_text(
    argv: Sequence[object],
    *,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``argv`` (paths and all, made strings) run to its end with its output captured as
    text, the way the tests run an installed command; ``timeout`` turns a hung command
    into a failed test rather than a stalled suite."""
    return subprocess.run(
        [str(a) for a in argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def enroll_agent(
    api_url: str,
    admin: str,
    device_id: str,
    data_dir: Path,
    *,
    tags: dict[str, str],
    bin_dir: Path | None = None,
) -> None:
    """Register ``device_id`` with ``tags`` (as the admin token ``admin``) and run
    ``edge-agent enroll`` (from ``bin_dir``, default this interpreter's) with the token the
    server hands out, into ``data_dir``."""
    import sys

    import httpx

    r = httpx.post(
        f"{api_url}/api/v1/devices",
        headers={"Authorization": f"Bearer {admin}"},
        json={"id": device_id, "tags": tags},
        timeout=HTTP_TIMEOUT,
    )
    r.raise_for_status()
    edge_agent = (bin_dir or Path(sys.executable).parent) / "edge-agent"
    token = r.json()["token"]
    command = ["enroll", "--server", api_url, "--token", token, "--data-dir", data_dir]
    done = run_text([edge_agent, *command], timeout=60)
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def answering_device(
    server: FleetServer,
    folder: Path,
    device_id: str,
    handlers: dict[str, Callable[[Any], Any]],
    *,
    features: tuple[str, ...] = (),
) -> Iterator[None]:
    """``device_id`` online on the agent's own link and command router, answering the
    commands in ``handlers`` (name -> handler returning an ``agent.commands.Outcome``),
    having reported them (and ``features``) as its capabilities."""
    from agent.commands import CommandRouter
    from edgefleet_contract.messages import ReportedState

    link = fleet_link(server, folder, device_id, on_command=lambda c: router.submit(c))
    router = CommandRouter(device_id, link.ack_command)
    for name, handler in handlers.items():
        router.register(name, handler)
    router.start()
    link.start()
    try:
        declared = [*router.names, *features]
        link.report(
            ReportedState(
                device_id=device_id, ts=time.time(), agent_version="test", capabilities=declared
            )
        )

        def reported() -> bool:
            state = server.store.get_device(device_id).reported
            return state is not None and state.capabilities == declared

        wait_for(reported, what=f"{device_id}'s capabilities")
        yield
    finally:
        link.stop()
        router.stop()
