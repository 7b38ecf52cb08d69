"""A throwaway fleet for benchmarks: CA, identities and a managed mosquitto in a temp dir."""

from __future__ import annotations

import os
import platform
import resource
import ssl
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgefleet_common.mqtt import TlsFiles
from edgefleet_common.ports import free_port
from fleet_server.broker import BrokerLayout, ManagedBroker
from fleet_server.config import SERVER_IDENTITY
from fleet_server.pki import FleetCA, write_private


class Lab:
    def __init__(self, servers: Sequence[str] = ()) -> None:
        """``servers``: further server identities the broker's ACL lets see the fleet."""
        self.dir = Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
        self.ca = FleetCA.create(self.dir / "ca", now=time.time())
        self.server = self.identity(SERVER_IDENTITY)
        layout = BrokerLayout(self.dir / "broker")
        layout.directory.mkdir(parents=True)
        cert, key = self.ca.issue_server_cert(["localhost"], ["127.0.0.1"], now=time.time())
        layout.cert.write_bytes(cert)
        write_private(layout.key, key)
        self.broker = ManagedBroker(
            layout, ca_file=self.ca.cert_file, bind="127.0.0.1", port=free_port(), servers=servers
        )
        self.broker.configure(crl_pem=self.ca.crl_pem([], now=time.time()))
        self.broker.start()

    def identity(self, cn: str) -> TlsFiles:
        cert, key = self.ca.issue_client_cert(cn, validity_s=86400, now=time.time())
        folder = self.dir / "ids" / cn
        folder.mkdir(parents=True, exist_ok=True)
        write_private(folder / "key.pem", key)
        (folder / "cert.pem").write_bytes(cert)
        return TlsFiles(self.ca.cert_file, folder / "cert.pem", folder / "key.pem")

    def close(self) -> None:
        self.broker.stop()


def raise_fd_limit(wanted: int) -> None:
    """Let this process hold ``wanted`` descriptors: a connection bench holds a socket a device."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        wanted = min(hard, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))


def insert_devices(store: Any, ids: Sequence[str]) -> None:
    """Enrolled, offline devices ``ids`` in a SQLite store, in one statement.

    The connection benches need the rows for presence, not the enrollment path.
    """
    conn = store._conn()
    conn.executemany(
        "INSERT INTO devices (id, name, tags, groups, state, created_at, online, "
        "desired_version) VALUES (?, ?, '{}', '[]', 'enrolled', 0, 0, 0)",
        [(d, d) for d in ids],
    )


def client_contexts(
    identity: Callable[[str], TlsFiles], ids: Sequence[str]
) -> list[tuple[str, ssl.SSLContext]]:
    """A TLS context for each device id with its own certificate: the ACL binds topics to the CN."""
    out = []
    for device_id in ids:
        tls = identity(device_id)
        ctx = ssl.create_default_context(cafile=str(tls.ca_file))
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        out.append((device_id, ctx))
    return out


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def table(rows: list[dict[str, object]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)
