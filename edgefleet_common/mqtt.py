"""The MQTT session both sides build on (paho-mqtt 2.x).

One thread owns the paho client and its socket: it connects, runs the network
loop, runs work other threads hand it (:meth:`MqttSession.call_soon`), and calls
:meth:`MqttSession._tick` between loop iterations.  Nothing else touches the
client: when paho does not run its own thread it writes to the TLS socket from
whichever thread publishes, and two threads writing one SSL object corrupt the
stream (and memory).  Reconnects use :class:`~edgefleet_common.backoff.Backoff`
(capped, jittered) instead of paho's built-in schedule.

MQTT v5 is the default because it tells a client why a publish was refused
("Not authorized") and when nobody heard it ("No matching subscribers": the
fleet's ingest is not subscribed yet, so a spooled batch must be kept and sent
again); 3.1.1 works the same way, minus those reasons.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet_contract.errors import LinkError
from edgefleet_contract.messages import LinkStats

from .background import BackgroundThread, call_guarded
from .backoff import Backoff

log = logging.getLogger(__name__)

_NO_MATCHING_SUBSCRIBERS = 0x10
"""The MQTT 5 PUBACK reason code (a success code) for a publish nobody subscribed to."""


class Puback(Enum):
    """What the broker's acknowledgement of a QoS 1 publish says about it."""

    ACCEPTED = "accepted"
    UNHEARD = "unheard"
    """Accepted, but it matched no subscription (MQTT 5 only): nobody received it."""
    REFUSED = "refused"
    """Refused for good (an MQTT 5 failure reason such as "Not authorized")."""


Protocol = Literal["5", "3.1.1"]


@dataclass(frozen=True)
class TlsFiles:
    """A client's certificate, its private key, and the CA that signs the broker."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach a broker."""

    host: str
    port: int
    tls: TlsFiles | None = None
    protocol: Protocol = "5"
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    alternates: tuple[tuple[str, int], ...] = ()
    """Other nodes of the same broker cluster, tried in turn when one cannot be reached."""

    @property
    def targets(self) -> list[tuple[str, int]]:
        return [(self.host, self.port), *self.alternates]


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """A client TLS context that verifies the broker and presents our certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.cert_file is not None:
        ctx.load_cert_chain(str(files.cert_file), str(files.key_file) if files.key_file else None)
    return ctx


class MqttSession:
    """A long-lived, self-healing MQTT connection.

    Subclasses override :meth:`_on_connected` (subscribe, announce), :meth:`_on_message`
    and optionally :meth:`_on_published` and :meth:`_tick`.
    """

    session_expiry_s = 7 * 86400
    """How long the broker keeps our subscriptions and queued QoS 1 messages while we are away."""

    def __init__(
        self,
        client_id: str,
        endpoint: Endpoint,
        *,
        will: Will | None = None,
        clean_start: bool = False,
        manual_ack: bool = False,
        backoff: Backoff | None = None,
        tick_interval: float = 0.1,
    ) -> None:
        self.client_id = client_id
        self.endpoint = endpoint
        self._clean_start = clean_start
        self._backoff = backoff or Backoff()
        self._tick_interval = tick_interval
        self._network = BackgroundThread(f"mqtt-{client_id}", self._run)
        self._stop = self._network.stopping
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.connected = threading.Event()
        self.generation = 0
        """Increments on every successful connect; lets manual acks skip stale mids."""
        self.last_error: str | None = None
        self._stats = {"connects": 0, "disconnects": 0, "published": 0, "publish_failures": 0}
        self._stats_lock = threading.Lock()
        self._targets = endpoint.targets
        self._target_index = 0

        v5 = endpoint.protocol == "5"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else clean_start,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        self._client.max_inflight_messages_set(100)
        self._client.max_queued_messages_set(0)
        if endpoint.tls is not None:
            self._client.tls_set_context(tls_context(endpoint.tls))
        if endpoint.username is not None:
            self._client.username_pw_set(endpoint.username, endpoint.password)
        if will is not None:
            self._client.will_set(will.topic, will.payload, will.qos, will.retain)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_publish = self._handle_publish

    # ----------------------------------------------------------- lifecycle --

    def start(self) -> None:
        if self._network.thread is not None:
            raise LinkError(f"MQTT session {self.client_id} already started")
        self._network.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (no Last Will) and join the network thread."""
        self._network.stop(timeout)

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    @property
    def link_stats(self) -> LinkStats:
        with self._stats_lock:
            return LinkStats(**self._stats)

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[name] += n

    # ------------------------------------------------------------ publish --

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int | None:
        """Publish now (network thread only); returns the mid, or ``None`` if not connected."""
        self._check_thread()
        if not self.connected.is_set():
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        queued = qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN  # paho resends it
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not queued:
            self._count("publish_failures")
            return None
        self._count("published")
        return info.mid

    def publish_soon(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> bool:
        """Publish from any thread; ``False`` when not connected (nothing was queued)."""
        if not self.connected.is_set():
            return False
        self.call_soon(lambda: self._publish_quietly(topic, payload, qos, retain))
        return True

    def _publish_quietly(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.publish(topic, payload, qos=qos, retain=retain)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the network thread at its next iteration (thread-safe)."""
        self._calls.put(fn)

    def subscribe(self, topics: list[tuple[str, int]]) -> None:
        self._check_thread()
        self._client.subscribe(topics)

    def ack(self, mid: int, qos: int, generation: int) -> None:
        """Acknowledge an inbound message (manual-ack mode) received in ``generation``."""

        def send() -> None:
            if generation == self.generation and self.connected.is_set():
                self._client.ack(mid, qos)

        self.call_soon(send)

    def _check_thread(self) -> None:
        network = self._network.thread
        if network is not None and threading.current_thread() is not network:
            raise LinkError("MqttSession.publish/subscribe must run on the network thread")

    # -------------------------------------------------------- subclass API --

    def _on_connected(self) -> None:
        """Runs on every (re)connect, in the network thread."""

    def _on_message(self, message: paho.MQTTMessage) -> None:
        """Runs in the network thread; must not block for long."""

    def _on_published(self, mid: int, outcome: Puback, reason: str) -> None:
        """The broker acknowledged (or, with v5, refused) a QoS 1 publish."""

    def _on_disconnected(self) -> None:
        """Runs after the connection dropped."""

    def _tick(self) -> None:
        """Runs in the network thread between loop iterations, connected or not."""

    # ------------------------------------------------------------- loop --

    @property
    def target(self) -> tuple[str, int]:
        """The broker node this session uses now (or tries next)."""
        return self._targets[self._target_index]

    def _next_target(self) -> None:
        """Fail over to the next node of the cluster (a no-op with one endpoint)."""
        self._target_index = (self._target_index + 1) % len(self._targets)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._connect_once():
                self._next_target()
                self._sleep(self._backoff.next_delay())
                continue
            generation = self.generation
            while not self._stop.is_set():
                rc = self._client.loop(timeout=self._tick_interval)
                self._run_calls()
                self._safe_tick()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
            if self.connected.is_set():
                self._mark_disconnected(f"network loop ended: {rc.name}")
            if self.generation == generation or len(self._targets) > 1:
                # Refused at CONNACK, or a node of a cluster went away: its sessions
                # resume on another node, and the lost one may not come back soon.
                self._next_target()
            if not self._stop.is_set():
                self._sleep(self._backoff.next_delay())
        self._shutdown()

    def _connect_once(self) -> bool:
        props = None
        if self.endpoint.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.session_expiry_s
        host, port = self.target
        try:
            self._client.connect(
                host,
                port,
                keepalive=self.endpoint.keepalive,
                clean_start=self._clean_start if self.endpoint.protocol == "5" else 3,
                properties=props,
            )
            return True
        except (OSError, ssl.SSLError) as exc:
            self.last_error = f"cannot reach broker {host}:{port}: {exc}"
            log.debug("%s: %s", self.client_id, self.last_error)
            self._safe_tick()
            return False

    def _shutdown(self) -> None:
        if self.connected.is_set():
            self._run_calls()
            self._before_disconnect()
            deadline = time.monotonic() + 2.0
            while self._client.want_write() and time.monotonic() < deadline:
                self._client.loop(timeout=0.05)
            self._client.disconnect()
            self._client.loop(timeout=0.1)
        self.connected.clear()

    def _before_disconnect(self) -> None:
        """Last words on a clean stop (the agent publishes its offline status)."""

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._stop.wait(min(self._tick_interval, max(0.0, deadline - time.monotonic())))
            self._safe_tick()

    def _run_calls(self) -> None:
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            call_guarded(fn, log, "%s: queued network call failed", self.client_id)

    def _safe_tick(self) -> None:
        call_guarded(self._tick, log, "%s: tick failed", self.client_id)

    def _mark_disconnected(self, why: str) -> None:
        self.connected.clear()
        self._count("disconnects")
        self.last_error = why
        log.info("%s: disconnected (%s)", self.client_id, why)
        call_guarded(self._on_disconnected, log, "%s: disconnect hook failed", self.client_id)

    # --------------------------------------------------------- callbacks --

    def _handle_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.warning("%s: %s", self.client_id, self.last_error)
            return
        self.generation += 1
        self._backoff.reset()
        self._count("connects")
        self.connected.set()
        log.info("%s: connected to %s:%s", self.client_id, *self.target)
        call_guarded(self._on_connected, log, "%s: connect hook failed", self.client_id)

    def _handle_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if self.connected.is_set():
            self._mark_disconnected(str(reason))

    def _handle_message(
        self, client: paho.Client, userdata: Any, message: paho.MQTTMessage
    ) -> None:
        call_guarded(
            lambda: self._on_message(message),
            log,
            "%s: message handler failed on %s",
            self.client_id,
            message.topic,
        )

    def _handle_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            outcome = Puback.REFUSED
            self._count("publish_failures")
        elif reason.value == _NO_MATCHING_SUBSCRIBERS:
            outcome = Puback.UNHEARD
        else:
            outcome = Puback.ACCEPTED
        call_guarded(
            lambda: self._on_published(mid, outcome, str(reason)),
            log,
            "%s: publish hook failed",
            self.client_id,
        )
