"""A throwaway fleet for benchmarks: CA, identities and a managed mosquitto in a temp dir."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

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


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def table(rows: list[dict[str, object]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)
