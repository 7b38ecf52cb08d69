"""Loopback ports for a service to listen on: picked here, bound later by someone else.

mosquitto, RabbitMQ and PostgreSQL cannot listen on port 0 and report the port
they got, so whoever starts them must name a port first, and the port is free
only when it is picked.  Two things take such a port in between: an outgoing
connection (the kernel hands those out from its ephemeral range) and another
process picking ports the same way (a second test run on the machine).  So a
port comes from below the ephemeral range, is checked bindable, and is
reserved with a lock file that this process holds until it exits.
"""

from __future__ import annotations

import fcntl
import random
import socket
import tempfile
import threading
from pathlib import Path
from typing import IO

__all__ = ["free_port", "port_is_free"]

_LOCKS = Path(tempfile.gettempdir()) / "edgefleet-ports"
_FLOOR = 20000
_held: dict[int, IO[bytes]] = {}
_lock = threading.Lock()
_rng = random.Random()


def _ephemeral_floor() -> int:
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        return int(low)
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def port_is_free(port: int, host: str = "127.0.0.1", *, reuse: bool = False) -> bool:
    """True when ``port`` can be bound now (``reuse``: as servers bind, ``SO_REUSEADDR``)."""
    with socket.socket() as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _reserve(port: int) -> bool:
    _LOCKS.mkdir(mode=0o1777, exist_ok=True)
    handle = open(_LOCKS / str(port), "ab")  # noqa: SIM115 (held until the process exits)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return False
    _held[port] = handle
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port of ``host`` no one listens on, reserved for this process (see the module doc).

    Raises ``OSError`` when the range below the ephemeral ports is exhausted.
    """
    ceiling = _ephemeral_floor()
    floor = min(_FLOOR, ceiling // 2)
    span = ceiling - floor
    start = _rng.randrange(span)
    with _lock:
        for offset in range(span):
            port = floor + (start + offset) % span
            if port in _held or not port_is_free(port, host):
                continue
            if _reserve(port):
                return port
    raise OSError(f"no free port between {floor} and {ceiling - 1} on {host}")
