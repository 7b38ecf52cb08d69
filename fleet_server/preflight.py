"""Checks made before the server starts anything: its data directory and its ports.

A problem found here is a :class:`ConfigError` with one line naming the path or
port, the setting that chooses it and what to do, so ``fleet-server`` exits 2
with nothing started and nothing left to clean up.  Checking first matters for
the ports: mosquitto, started on a taken port, exits at once, and a probe of the
port would find the *other* process listening there and call the broker up.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from edgefleet_contract.errors import ConfigError

DATA_DIR_SETTING = "--data-dir, data_dir or FLEET_DATA_DIR"


def check_data_dir(path: Path, *, create: bool) -> None:
    """``path`` is (or, with ``create``, can become) a directory this user can write."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        pass  # not there yet: created below, or refused with the reason
    except OSError as exc:
        raise ConfigError(
            f"cannot reach data directory {path}: {_reason(exc)}; give this user (uid "
            f"{os.geteuid()}) access to the directories above it or choose another "
            f"({DATA_DIR_SETTING})"
        ) from None
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"data directory {path} is a file, not a directory; "
            f"choose another path ({DATA_DIR_SETTING})"
        )
    if not path.exists():
        if not create:
            raise ConfigError(f"{path} does not exist; run `fleet-server init` first")
        try:
            path.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create data directory {path}: {_reason(exc)}; "
                f"create it with write access for this user or choose another ({DATA_DIR_SETTING})"
            ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"data directory {path} is not writable by this user (uid {os.geteuid()}); "
            f"fix its owner or mode, or choose another ({DATA_DIR_SETTING})"
        )


def data_dir_error(path: Path, exc: OSError) -> ConfigError:
    """One line for an OS error met under the data directory (a file inside it unreadable)."""
    where = exc.filename or path
    return ConfigError(
        f"cannot use {where} in data directory {path}: {_reason(exc)}; "
        "fix the owner or mode of the files there (the server runs as uid "
        f"{os.geteuid()})"
    )


def check_port(host: str, port: int, *, setting: str, env: str, what: str) -> None:
    """Refuse a ``host:port`` another process already listens on (or that cannot be bound)."""
    bind_host = "" if host in ("0.0.0.0", "::") else host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR, as the real listeners set it: a port in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind_host, port))
        except OSError as exc:
            taken = exc.errno == errno.EADDRINUSE
            reason = (
                "is already in use by another process"
                if taken
                else f"cannot be listened on ({_reason(exc)})"
            )
            raise ConfigError(
                f"{what} port {host}:{port} {reason}; stop that process or set {setting} "
                f"(environment {env}) to a free port"
            ) from None


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
