"""Tie each device's MQTT client id to its certificate on a RabbitMQ cluster.

RabbitMQ 3.10 registers an MQTT client id cluster-wide when a connection logs in and
disconnects the connection that held the id before.  The topic rules of
:mod:`fleet_server.rabbitmq` already give a connection nothing unless its client id is
its user, but that comes too late: a device with a valid certificate could still knock
another device off the broker by claiming its client id, again and again.  3.10's own
settings cannot tie the id to the certificate; its authorization backends, however, are
asked for vhost access *with* the client id, before the id is registered.

So the nodes consult two authorization backends, and both must allow: the internal one,
which keeps every real right (users, permissions, topic permissions), and RabbitMQ's HTTP
backend, answered here with one rule: a device user presenting another client id is
refused the vhost.  Every other question is allowed, since the internal backend decides
it.  Authentication stays internal (certificate logins); the answers need no state, so a
checker runs beside each node (``fleet-server broker-authz``) and broker logins never
wait on a fleet-server replica.  A checker that cannot be reached makes RabbitMQ refuse
the login: it fails closed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edgefleet_contract.ids import is_device_id

log = logging.getLogger(__name__)

PLUGIN = "rabbitmq_auth_backend_http"
QUESTIONS = ("user", "vhost", "resource", "topic")
"""What RabbitMQ's HTTP backend asks, one path each."""
MAX_BODY = 8192
"""A question is a few form fields; anything longer is refused unread."""

ADVANCED_CONFIG = (
    "[{rabbit, [{auth_backends, [{rabbit_auth_backend_internal,\n"
    "    [rabbit_auth_backend_internal, rabbit_auth_backend_http]}]}]}].\n"
)
"""advanced.config of each node: internal authentication, internal *and* HTTP
authorization (rabbitmq.conf's ``auth_backends.N.authz`` takes only one backend)."""


def node_config(url: str) -> str:
    """The rabbitmq.conf lines that point a node's HTTP backend at the checker ``url``."""
    lines = [f"auth_http.{q}_path = {url.rstrip('/')}/{q}" for q in QUESTIONS]
    return "\n".join(["auth_http.http_method = post", *lines]) + "\n"


def allowed(question: str, params: Mapping[str, str]) -> bool:
    """Whether the answer to one question of RabbitMQ's HTTP backend is "allow".

    Only the vhost question carries the MQTT client id in 3.10 (``client_id``; absent
    for AMQP and the management API).  Users that are not device ids (the server's
    ``fleet.server`` identities, the cluster's admin) may use any client id: they are
    not devices and the internal rights decide what they can do.
    """
    if question not in QUESTIONS:
        return False
    if question != "vhost":
        return True
    client_id = params.get("client_id")
    user = params.get("username", "")
    return client_id is None or client_id == user or not is_device_id(user)


class ClientIdCheck:
    """The checker as a small HTTP service (threads; loopback by default).

    ``refused`` counts the client ids it refused.  The admin's password arrives with
    the ``user`` question; no question's fields are logged.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.refused = 0
        self._lock = threading.Lock()
        self._server = _Server((host, port), self)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def answer(self, path: str, body: bytes) -> bool:
        question = path.rstrip("/").rsplit("/", 1)[-1]
        params = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
        ok = allowed(question, params)
        if not ok and question == "vhost":
            with self._lock:
                self.refused += 1
            log.warning(
                "refused %r the client id %r (a device may use only its own)",
                params.get("username"),
                params.get("client_id"),
            )
        return ok

    def start(self) -> ClientIdCheck:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="rabbitmq-authz", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every open connection.  Idempotent (``shutdown``
        would wait forever on a server never started)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
            self._thread = None
        self._server.server_close()
        self._server.drop_connections()


class _Server(ThreadingHTTPServer):
    """Threads per connection, and the open connections known, so that a stopped
    checker is gone for the nodes too: RabbitMQ keeps its connections open, and their
    threads would otherwise go on answering after the listener closed."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], check: ClientIdCheck) -> None:
        super().__init__(address, _Handler)
        self.check = check
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._open_lock:
            still_open = list(self._open)
        for sock in still_open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: object, client_address: object) -> None:
        """A node that dies mid-question resets its connection: one quiet line, no
        traceback on stderr."""
        log.debug("a question from %s ended early", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """One question of RabbitMQ's HTTP backend, answered "allow" or "deny"."""

    protocol_version = "HTTP/1.1"  # RabbitMQ's client keeps connections open
    server: _Server

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._reply(413, "deny")
            self.close_connection = True
            return
        self._reply(200, self._verdict(self.path, self.rfile.read(length)))

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        self._reply(200, self._verdict(path, query.encode()))

    def _verdict(self, path: str, fields: bytes) -> str:
        return "allow" if self.server.check.answer(path, fields) else "deny"

    def _reply(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: RabbitMQ asks several questions per connection."""
