"""The server's ingest consumer on the broker cluster: one replicated quorum queue over AMQP.

Every upstream channel of every device (``devices.*.telemetry`` and the rest) is bound
to the quorum queue ``fleet.ingest`` on the MQTT plugin's topic exchange.  A device's
QoS 1 publish is acknowledged by the broker only once the queue has it on a majority
of nodes; the consumer acknowledges a delivery only after the store committed it.  So
a node lost, or the server killed, loses nothing: unacknowledged deliveries come back
(the store drops the duplicates by batch id).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

import pika
import pika.credentials
import pika.exceptions

from edgefleet_common.backoff import Backoff
from edgefleet_common.mqtt import TlsFiles, tls_context
from edgefleet_contract import topics
from edgefleet_contract.errors import BrokerError

from .ingest import Inbound, Ingest
from .rabbitmq import EXCHANGE

log = logging.getLogger(__name__)

INGEST_QUEUE = "fleet.ingest"
PREFETCH = 1000
"""Unacknowledged deliveries the consumer may hold; below the ingest queue size, so
handing a message to ingest never blocks the thread that must also send the acks."""


def routing_key(topic: str) -> str:
    """MQTT topic -> AMQP routing key, the way the MQTT plugin maps them."""
    return topic.replace("/", ".")


def topic_of(key: str) -> str:
    return key.replace(".", "/")


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
