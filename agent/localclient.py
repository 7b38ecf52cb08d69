"""A small client for the local prediction API (what ``edge-agent predict`` uses).

Standard library only, like the server: ``http.client`` over TCP, or over the
Unix socket when the daemon listens on one.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .config import LocalApiSettings
from .inputs import NPY


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def address(settings: LocalApiSettings, data_dir: Path) -> str:
    """The running daemon's address (it writes it on start), else the configured one."""
    from .daemon import LOCAL_API_ADDRESS

    try:
        written = (data_dir / LOCAL_API_ADDRESS).read_text().strip()
    except OSError:
        written = ""
    if written:
        return written
    if settings.unix_socket is not None:
        return f"unix:{settings.unix_socket}"
    return f"http://{settings.host}:{settings.port}"


def connect(where: str, timeout: float = 30.0) -> http.client.HTTPConnection:
    if where.startswith("unix:"):
        return _UnixConnection(where[5:], timeout)
    hostport = where.removeprefix("http://").rstrip("/")
    return http.client.HTTPConnection(hostport, timeout=timeout)


def request(
    where: str,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str = "application/json",
    timeout: float = 30.0,
) -> tuple[int, Any]:
    """One request; raises :class:`OSError` when nothing listens at ``where``."""
    conn = connect(where, timeout)
    try:
        headers = {"Content-Type": content_type} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = {"error": {"detail": raw[:200].decode(errors="replace")}}
        return response.status, doc
    finally:
        conn.close()


def predict(where: str, rows: npt.NDArray[Any], timeout: float = 30.0) -> tuple[int, Any]:
    """POST rows as ``.npy`` (keeps dtype and shape exactly)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(rows), allow_pickle=False)
    return request(where, "POST", "/v1/predict", buffer.getvalue(), NPY, timeout)
