"""The clustered broker: a RabbitMQ cluster with its MQTT plugin.

Devices speak MQTT 3.1.1 over mTLS to any node; the certificate's CN is the
RabbitMQ user (``mqtt.ssl_cert_login``), which exists only while the device is
enrolled and not revoked.  Each device user gets exact permissions: its own MQTT
session queues, and topic rights on ``devices.{id}.<channel>`` for the channels it
publishes (telemetry, state, status, ack, fl/out) and the ones it reads (cmd,
fl/in).  The topic rule also requires the MQTT client id to equal the user, so a
device cannot use another device's session.

The server does not subscribe over MQTT for ingest: it consumes one replicated
quorum queue (``fleet.ingest``) bound to the MQTT topic exchange, over AMQP with
manual acks sent only after the store committed.  A device's QoS 1 publish is
acknowledged by the broker only once the quorum queue has it on a majority of
nodes, so losing one node loses no batch; the consumer reconnects to another
node and what it had not acknowledged is redelivered (the store drops
duplicates).  Downstream messages (commands, FL frames) go out on an MQTT session
like in the other modes, to whichever node answers.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import httpx
import pika
import pika.credentials
import pika.exceptions

from edgefleet_common.backoff import Backoff
from edgefleet_common.mqtt import TlsFiles, tls_context
from edgefleet_contract import topics
from edgefleet_contract.errors import BrokerError

from .config import SERVER_IDENTITY
from .ingest import Inbound, Ingest

log = logging.getLogger(__name__)

INGEST_QUEUE = "fleet.ingest"
EXCHANGE = "amq.topic"
DEVICE_WRITES = ("telemetry", "state", "status", "ack", "fl.out")
DEVICE_READS = ("cmd", "fl.in")
PREFETCH = 1000
"""Unacknowledged deliveries the consumer may hold; below the ingest queue size, so
handing a message to ingest never blocks the thread that must also send the acks."""


def routing_key(topic: str) -> str:
    """MQTT topic -> AMQP routing key, the way the MQTT plugin maps them."""
    return topic.replace("/", ".")


def topic_of(key: str) -> str:
    return key.replace(".", "/")


def device_permissions(device_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """Vhost permissions and topic permissions for one device user.

    ``{client_id}`` is expanded by the broker on every check: the look-ahead makes
    every topic right void unless the connection's client id is the device id.
    """
    queues = f"^mqtt-subscription-{device_id}qos[01]$"
    perms = {
        "configure": queues,
        "write": f"{queues}|^amq\\.topic$",
        "read": f"{queues}|^amq\\.topic$",
    }
    guard = "^(?=devices\\.{client_id}\\.)"
    writes = "|".join(c.replace(".", "\\.") for c in DEVICE_WRITES)
    reads = "|".join(c.replace(".", "\\.") for c in DEVICE_READS)
    topic_perms = {
        "exchange": EXCHANGE,
        "write": f"{guard}devices\\.{device_id}\\.({writes})$",
        "read": f"{guard}devices\\.{device_id}\\.({reads})$",
    }
    return perms, topic_perms


class RabbitAdmin:
    """The cluster's management HTTP API, tried node after node until one answers."""

    def __init__(self, urls: Sequence[str], user: str, password: str, *, vhost: str = "/") -> None:
        if not urls:
            raise BrokerError("broker.management_urls is empty: the server cannot manage users")
        self._urls = list(urls)
        self._auth = (user, password)
        self._vhost = urllib.parse.quote(vhost, safe="")
        self._client = httpx.Client(timeout=30)

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        last = "no node tried"
        for url in list(self._urls):
            try:
                r = self._client.request(method, f"{url}/api{path}", auth=self._auth, **kw)
            except httpx.HTTPError as exc:
                last = f"{url}: {exc}"
                continue
            if r.status_code in (401, 403):
                raise BrokerError(
                    f"the broker's management API refused {self._auth[0]!r} ({r.status_code}); "
                    "check broker.admin_user / broker.admin_password"
                )
            if r.status_code >= 500:
                last = f"{url}: HTTP {r.status_code}"
                continue
            self._urls.remove(url)
            self._urls.insert(0, url)  # keep using the node that answered
            return r
        raise BrokerError(f"no node of the broker cluster answered: {last}")

    def _ok(self, r: httpx.Response, what: str) -> None:
        if r.status_code >= 400 and r.status_code != 404:
            raise BrokerError(f"broker refused to {what}: HTTP {r.status_code} {r.text[:200]}")

    def put_device(self, device_id: str) -> None:
        perms, topic_perms = device_permissions(device_id)
        user = urllib.parse.quote(device_id, safe="")
        self._ok(
            self.request("PUT", f"/users/{user}", json={"password_hash": "", "tags": ""}),
            f"add user {device_id}",
        )
        self._ok(
            self.request("PUT", f"/permissions/{self._vhost}/{user}", json=perms),
            f"set permissions of {device_id}",
        )
        self._ok(
            self.request("PUT", f"/topic-permissions/{self._vhost}/{user}", json=topic_perms),
            f"set topic permissions of {device_id}",
        )

    def put_server(self, identity: str = SERVER_IDENTITY) -> None:
        user = urllib.parse.quote(identity, safe="")
        self._ok(
            self.request("PUT", f"/users/{user}", json={"password_hash": "", "tags": ""}),
            f"add user {identity}",
        )
        all_of = {"configure": ".*", "write": ".*", "read": ".*"}
        self._ok(
            self.request("PUT", f"/permissions/{self._vhost}/{user}", json=all_of),
            f"set permissions of {identity}",
        )

    def import_devices(self, device_ids: Iterable[str], chunk: int = 1000) -> int:
        """Create many device users by definitions import, ``chunk`` users a request
        (one request for 10,000 can outlast an HTTP timeout on a busy node).  Importing
        a user that exists again is harmless, so a retried chunk is too."""
        ids = list(device_ids)
        vhost = urllib.parse.unquote(self._vhost)
        for start in range(0, len(ids), chunk):
            users, perms, topic_perms = [], [], []
            for device_id in ids[start : start + chunk]:
                p, t = device_permissions(device_id)
                users.append({"name": device_id, "password_hash": "", "tags": ""})
                perms.append({"user": device_id, "vhost": vhost, **p})
                topic_perms.append({"user": device_id, "vhost": vhost, **t})
            body = {"users": users, "permissions": perms, "topic_permissions": topic_perms}
            r = self.request("POST", "/definitions", json=body, timeout=300)
            self._ok(r, "import device users")
        return len(ids)

    def users(self) -> set[str]:
        r = self.request("GET", "/users", params={"columns": "name"})
        self._ok(r, "list users")
        return {u["name"] for u in r.json()}

    def remove_device(self, device_id: str) -> int:
        """Delete the user and close every connection it has; returns connections closed."""
        user = urllib.parse.quote(device_id, safe="")
        self._ok(self.request("DELETE", f"/users/{user}"), f"delete user {device_id}")
        closed = 0
        for conn in self.connections():
            if conn.get("user") == device_id:
                name = urllib.parse.quote(str(conn["name"]), safe="")
                r = self.request(
                    "DELETE", f"/connections/{name}", headers={"X-Reason": "identity revoked"}
                )
                closed += r.status_code < 300
        return closed

    def connections(self) -> list[dict[str, Any]]:
        r = self.request(
            "GET", "/connections", params={"columns": "name,user,node,client_properties"}
        )
        self._ok(r, "list connections")
        return list(r.json())

    def health(self) -> dict[str, object]:
        r = self.request("GET", "/nodes", params={"columns": "name,running,mem_used"})
        self._ok(r, "list nodes")
        nodes = r.json()
        return {
            "nodes": len(nodes),
            "running": sum(1 for n in nodes if n.get("running")),
            "memory_bytes": sum(int(n.get("mem_used") or 0) for n in nodes),
        }


def connected_devices(admin: RabbitAdmin) -> set[str]:
    """Users with at least one open connection on any node (the server's own excluded)."""
    return {str(c.get("user")) for c in admin.connections()} - {SERVER_IDENTITY}


class PresenceSweep:
    """Marks offline the devices the store thinks online but no node has a connection for.

    A node that is killed takes its clients' Last Wills with it; devices that come
    back announce themselves, one that does not would stay "online".  The management
    API's view of connections lags by a few seconds, so a device is set offline only
    when it was missing from two listings in a row and nothing was heard from it for
    ``grace_s``.
    """

    def __init__(
        self,
        admin: RabbitAdmin,
        online: Callable[[], dict[str, float]],
        set_offline: Callable[[str], None],
        interval_s: float,
        grace_s: float = 15.0,
    ) -> None:
        self._admin = admin
        self._online = online
        self._set_offline = set_offline
        self.interval_s = interval_s
        self.grace_s = grace_s
        self._suspects: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.marked_offline = 0

    def sweep(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        connected = connected_devices(self._admin)
        last_seen = self._online()
        missing = set(last_seen) - connected
        for device_id in missing & self._suspects:
            if now - last_seen[device_id] >= self.grace_s:
                self._set_offline(device_id)
                self.marked_offline += 1
        self._suspects = missing

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="presence-sweep", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep()
            except (BrokerError, httpx.HTTPError, ValueError) as exc:
                log.warning("presence sweep skipped: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def sync_users(admin: RabbitAdmin, active: Iterable[str], revoked: Iterable[str]) -> None:
    """Make the broker's users exactly: the server, every active device, no revoked one."""
    admin.put_server()
    present = admin.users()
    missing = [d for d in active if d not in present]
    if missing:
        admin.import_devices(missing)
    for device_id in revoked:
        if device_id in present:
            admin.remove_device(device_id)


class AmqpIngest:
    """Consumes ``fleet.ingest`` over AMQP/TLS and hands each message to :class:`Ingest`.

    One thread owns the connection (pika is not thread-safe): acks from the ingest
    writer are handed to it with ``add_callback_threadsafe``.  On a lost connection
    it moves to the next node with the shared jittered backoff; deliveries not
    acknowledged on the old connection come back from the queue.
    """

    def __init__(
        self,
        urls: Sequence[tuple[str, int]],
        tls: TlsFiles,
        ingest: Ingest,
        *,
        vhost: str = "/",
        backoff: Backoff | None = None,
    ) -> None:
        if not urls:
            raise BrokerError(
                "broker.amqp_endpoints is empty: the server has nowhere to ingest from"
            )
        self._urls = list(urls)
        self._tls = tls
        self._ingest = ingest
        self._vhost = vhost
        self._backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._lock = threading.Lock()
        self.generation = 0
        self.connected = threading.Event()
        self.last_error: str | None = None
        self.node: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="amqp-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._lock:
            conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.add_callback_threadsafe(lambda: None)  # wake the loop
        if self._thread is not None:
            self._thread.join(timeout)

    def acknowledge(self, item: Inbound) -> None:
        """Ingest calls this after the store committed ``item``."""
        with self._lock:
            conn, channel = self._conn, self._channel
        if conn is None or item.generation != self.generation:
            return  # that connection is gone: the broker redelivers the message
        tag = item.mid

        def ack() -> None:
            if item.generation == self.generation and channel.is_open:
                channel.basic_ack(tag)

        with contextlib.suppress(Exception):
            conn.add_callback_threadsafe(ack)

    def _params(self, host: str, port: int) -> pika.ConnectionParameters:
        ctx = tls_context(self._tls)
        return pika.ConnectionParameters(
            host=host,
            port=port,
            virtual_host=self._vhost,
            credentials=pika.credentials.ExternalCredentials(),
            ssl_options=pika.SSLOptions(ctx, host),
            heartbeat=10,
            blocked_connection_timeout=60,
            connection_attempts=1,
            socket_timeout=5,
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            host, port = self._urls[0]
            try:
                self._consume(host, port)
            except (pika.exceptions.AMQPError, OSError, ssl.SSLError) as exc:
                self.last_error = f"AMQP {host}:{port}: {exc!r}"
                log.warning("ingest consumer: %s", self.last_error)
            finally:
                self.connected.clear()
                with self._lock:
                    conn, self._conn, self._channel = self._conn, None, None
                if conn is not None and conn.is_open:
                    with contextlib.suppress(Exception):
                        conn.close()
            if self._stop.is_set():
                return
            self._urls.append(self._urls.pop(0))  # next node
            self._stop.wait(self._backoff.next_delay())

    def _consume(self, host: str, port: int) -> None:
        conn = pika.BlockingConnection(self._params(host, port))
        channel = conn.channel()
        declare_ingest_queue(channel)
        channel.basic_qos(prefetch_count=PREFETCH)
        self.generation += 1
        generation = self.generation

        def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
            self._ingest.offer(
                Inbound(
                    topic=topic_of(method.routing_key),
                    payload=body,
                    received_at=time.time(),
                    mid=method.delivery_tag,
                    qos=1,
                    generation=generation,
                )
            )

        channel.basic_consume(INGEST_QUEUE, on_message, auto_ack=False)
        with self._lock:
            self._conn, self._channel = conn, channel
        self.node = f"{host}:{port}"
        self.connected.set()
        self._backoff.reset()
        log.info("ingest consumer on %s:%d (queue %s)", host, port, INGEST_QUEUE)
        while not self._stop.is_set():
            conn.process_data_events(time_limit=0.2)


def declare_ingest_queue(channel: Any) -> None:
    """The replicated queue every upstream channel of every device lands in."""
    channel.queue_declare(INGEST_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    for channel_name in sorted(topics.UPSTREAM):
        key = routing_key(topics.subscription(channel_name)).replace("+", "*")
        channel.queue_bind(INGEST_QUEUE, EXCHANGE, routing_key=key)
