"""The local prediction API: HTTP for apps on this device, on loopback or a Unix socket.

The device install has no web framework (it would cost memory every board
pays for), so this is the standard library's threading HTTP server with
HTTP/1.1 keep-alive.  Each connection gets its own thread with a socket
timeout, so a slow or stalled client holds one thread for at most
``IDLE_TIMEOUT_S`` and never blocks the others; the number of connections is
capped, and one over the cap is answered 503 at once instead of queueing.

    POST /v1/predict   JSON {"inputs": ...}, raw float32 or .npy -> predictions with ids
    POST /v1/feedback  {"prediction_id": ..., "label": ...}     -> stored labelled sample
    GET  /v1/health    health; 200 when a model answers, 503 otherwise
    GET  /v1/model     the served model: name, version, hash, runtime, labels, self-test

Every refusal is a 4xx JSON problem ``{"error": {"status", "title", "detail"}}``
whose detail says what to change; nothing a client sends can make the daemon
fail (internal errors answer 500 and are logged).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socketserver
import stat
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from edgefleet_common.background import BackgroundThread
from edgefleet_contract.errors import ConfigError, InputRejected, ModelError, NotFound

from .config import LocalApiSettings
from .inputs import CONTENT_TYPES, JSON, decode_body, decode_task_body
from .serving import ModelService, NoModel, describe, prediction_rows

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 10.0
"""A connection that sends nothing for this long is closed (slow-loris guard)."""
MAX_CONNECTIONS = 64
MAX_FEEDBACK_BYTES = 4096
DRAIN_LIMIT = 16 * 1024 * 1024
"""An oversized body up to this size is read and discarded so the client sees the 413."""

HealthSource = Callable[[], dict[str, object]]


class Problem(Exception):
    """An HTTP refusal with a detail for the person who wrote the client."""

    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class LocalApi:
    """Serves a :class:`ModelService` until :meth:`stop`; start with :meth:`start`."""

    def __init__(
        self,
        service: ModelService,
        settings: LocalApiSettings,
        *,
        health: HealthSource | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.health = health or (lambda: default_health(service))
        self._server: socketserver.BaseServer | None = None
        self._worker = BackgroundThread("local-api", self._serve)

    @property
    def address(self) -> str:
        """``http://host:port`` or ``unix:/path`` (after :meth:`start`)."""
        if self.settings.unix_socket is not None:
            return f"unix:{self.settings.unix_socket}"
        assert isinstance(self._server, _TcpServer)
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        try:
            if self.settings.unix_socket is not None:
                self._server = _UnixServer(self.settings.unix_socket, self)
            else:
                self._server = _TcpServer((self.settings.host, self.settings.port), self)
        except OSError as exc:
            where = self.settings.unix_socket or f"{self.settings.host}:{self.settings.port}"
            raise ConfigError(
                f"local_api cannot listen on {where}: {exc.strerror or exc} (change "
                "local_api.port / local_api.unix_socket, or set local_api.enabled = false)"
            ) from exc
        self._worker.start()
        log.info("local prediction API on %s", self.address)

    def _serve(self) -> None:
        assert self._server is not None  # start() made it before starting this thread
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._worker.stop(5)
        if self.settings.unix_socket is not None:
            self.settings.unix_socket.unlink(missing_ok=True)
        self._server = None


def default_health(service: ModelService) -> dict[str, object]:
    model = service.model
    if model is None:
        return {"status": "no-model", "detail": "no model is loaded on this device yet"}
    return {"status": "ok", "model": f"{model.manifest.name}@{model.manifest.version}"}


class _Limited:
    """Caps concurrent connections (the one over the cap gets an immediate 503); holds the API."""

    api: LocalApi

    def _init_limit(self, api: LocalApi) -> None:
        self.api = api
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            body = _problem_body(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections; retry")
            with contextlib.suppress(OSError):
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        super().process_request(request, client_address)  # type: ignore[misc]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer is routine; anything else is logged, not printed."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("local api client %s went away: %s", client_address, exc)
        else:
            log.exception("local api connection from %s failed", client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._slots.release()


class _TcpServer(_Limited, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: LocalApi) -> None:
        self._init_limit(api)
        super().__init__(address, _Handler)


class _UnixServer(_Limited, socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, api: LocalApi) -> None:
        self._init_limit(api)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise OSError(f"{path} exists and is not a socket")
            path.unlink()  # a stale socket from a previous run
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(str(path), _Handler)
        os.chmod(path, 0o660)  # owner and group (the apps' group) only


def _problem_body(status: HTTPStatus, detail: str) -> bytes:
    doc = {"error": {"status": int(status), "title": status.phrase, "detail": detail}}
    return json.dumps(doc).encode()


class _Handler(BaseHTTPRequestHandler):
    """One connection's requests; the :class:`LocalApi` it serves is its server's ``api``."""

    protocol_version = "HTTP/1.1"
    server_version = "edge-agent"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S

    @property
    def api(self) -> LocalApi:
        return cast(_Limited, self.server).api

    def address_string(self) -> str:  # Unix sockets have no peer address
        return str(self.client_address[0]) if self.client_address else "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("local api %s: " + format, self.address_string(), *args)

    # -------------------------------------------------------- dispatch --

    def do_GET(self) -> None:
        self._dispatch({"/v1/health": self._health, "/v1/model": self._model}, "GET")

    def do_POST(self) -> None:
        self._dispatch({"/v1/predict": self._predict, "/v1/feedback": self._feedback}, "POST")

    def _other(self) -> None:
        self._dispatch({}, self.command)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _other

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own refusals (bad request line, headers too large) as JSON."""
        if code == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:  # the client's fault: a 4xx
            code, message = HTTPStatus.BAD_REQUEST, f"{message}; speak HTTP/1.0 or 1.1"
        status = HTTPStatus(code)
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = self.protocol_version  # answer garbage with a status line
        body = _problem_body(status, message or status.description)
        self.send_response(code, message)
        self.send_header("Content-Type", JSON)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200:
            self.wfile.write(body)

    def _dispatch(self, routes: dict[str, Callable[[], tuple[int, object]]], verb: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            route = routes.get(path)
            if route is None:
                if path in _ALL_ROUTES:
                    raise Problem(
                        HTTPStatus.METHOD_NOT_ALLOWED, f"{path} does not accept {verb[:16]}"
                    )
                raise Problem(
                    HTTPStatus.NOT_FOUND,
                    f"no such endpoint {path[:100]!r}; see {', '.join(_ALL_ROUTES)}",
                )
            status, doc = route()
            self._send(status, json.dumps(doc).encode())
        except Problem as problem:
            self._refuse(problem)
        except Exception:
            log.exception("local api %s %s failed", verb, path[:100])
            self._refuse(Problem(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see logs"))

    def _refuse(self, problem: Problem) -> None:
        if problem.status >= 500 or problem.status in _CLOSING:
            self.close_connection = True  # the unread body would poison keep-alive
        self._send(problem.status, _problem_body(problem.status, problem.detail))

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", JSON)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _body(self, limit: int) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            raise Problem(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length (no chunking)")
        raw = self.headers.get("Content-Length")
        if raw is None:
            self.close_connection = True
            raise Problem(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise Problem(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from None
        if length > limit:
            self._discard(length)
            raise Problem(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {length} bytes is over the {limit}-byte limit; send fewer rows "
                "per request",
            )
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise Problem(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the body did not arrive within {IDLE_TIMEOUT_S:g} s",
            ) from None
        if len(body) != length:
            self.close_connection = True
            raise Problem(HTTPStatus.BAD_REQUEST, "the body ended before Content-Length")
        return body

    def _discard(self, length: int) -> None:
        # Closing with the body unread would reset the connection under a client
        # still sending, and it would never read the 413 that explains why.
        left = length if length <= DRAIN_LIMIT else 0
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)

    # --------------------------------------------------------- routes --

    def _health(self) -> tuple[int, object]:
        doc = self.api.health()  # 200 exactly when predictions can be answered
        return (200 if self.api.service.model is not None else 503), doc

    def _model(self) -> tuple[int, object]:
        model = self.api.service.model
        if model is None:
            raise Problem(HTTPStatus.SERVICE_UNAVAILABLE, "no model is loaded on this device")
        return 200, describe(model)

    def _predict(self) -> tuple[int, object]:
        body = self._body(self.api.settings.max_body_bytes)
        content_type = self.headers.get("Content-Type", "")
        if content_type.split(";", 1)[0].strip().lower() not in CONTENT_TYPES:
            raise Problem(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type {content_type[:80]!r} is not supported; use "
                + ", ".join(CONTENT_TYPES),
            )
        model = self.api.service.model
        if model is None:
            raise Problem(HTTPStatus.SERVICE_UNAVAILABLE, "no model is loaded on this device")
        if model.runner is not None:
            return self._infer(model, content_type, body)
        try:
            rows = decode_body(
                content_type, body, features=model.features, max_rows=self.api.settings.max_batch
            )
            prediction, ids = self.api.service.predict_tracked(rows)
        except InputRejected as exc:
            raise Problem(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
        except NoModel as exc:
            raise Problem(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from None
        return 200, {
            "model": {"name": model.manifest.name, "version": model.manifest.version},
            "predictions": prediction_rows(prediction, ids),
        }

    def _infer(self, model: Any, content_type: str, body: bytes) -> tuple[int, object]:
        """A format-2 model: named inputs, any task, a session for stateful models."""
        try:
            limit = self.api.settings.max_batch
            inputs, session = decode_task_body(content_type, body, max_rows=limit)
            header = self.headers.get("Session-Id") or None
            if header is not None and len(header) > 128:
                raise InputRejected("the Session-Id header is over 128 characters")
            session = session or header
            result, session = self.api.service.infer(inputs, session)
        except InputRejected as exc:
            raise Problem(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
        except NoModel as exc:
            raise Problem(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from None
        doc: dict[str, object] = {
            "model": {"name": model.manifest.name, "version": model.manifest.version},
            "task": model.task_kind,
            "predictions": result.results,
        }
        if session is not None:
            doc["session"] = session
        return 200, doc

    def _feedback(self) -> tuple[int, object]:
        body = self._body(MAX_FEEDBACK_BYTES)
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise Problem(
                HTTPStatus.BAD_REQUEST,
                'body is not valid JSON; send {"prediction_id": "...", "label": "..."}',
            ) from None
        if not isinstance(doc, dict):
            raise Problem(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        prediction_id, label = doc.get("prediction_id"), doc.get("label")
        if not isinstance(prediction_id, str) or not prediction_id:
            raise Problem(
                HTTPStatus.UNPROCESSABLE_ENTITY, '"prediction_id" must be a non-empty string'
            )
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise Problem(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                '"label" must be a label name (string) or a class index (integer)',
            )
        try:
            correct = self.api.service.feedback(prediction_id, label)
        except NotFound as exc:
            raise Problem(HTTPStatus.NOT_FOUND, str(exc)) from None
        except NoModel as exc:
            raise Problem(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from None
        except ModelError as exc:
            raise Problem(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
        return 200, {"stored": True, "correct": correct}


_CLOSING = (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, HTTPStatus.REQUEST_TIMEOUT)
_ALL_ROUTES = ("/v1/predict", "/v1/feedback", "/v1/health", "/v1/model")
