"""``fleet-server broker-config``: a standalone broker configured like the managed one,
with every replica identity in its ACL -- and a real mosquitto accepts the files."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from fleet_server.broker_files import write_broker_files
from fleet_server.config import BrokerSettings, ServerSettings
from fleet_server.server import initialize

from .harness import ADMIN_PASSWORD, free_port


def test_broker_files_list_every_replica_and_start_a_real_mosquitto(tmp_path: Path) -> None:
    settings = ServerSettings(
        data_dir=tmp_path / "fleet",
        broker=BrokerSettings(port=free_port(), replicas=["api-1", "worker-1"]),
    )
    initialize(settings, admin_password=ADMIN_PASSWORD)
    conf = write_broker_files(settings)
    acl = (conf.parent / "acl").read_text()
    for identity in ("fleet.server", "fleet.server.api-1", "fleet.server.worker-1"):
        assert f"user {identity}\ntopic readwrite devices/#" in acl
    assert "pattern readwrite devices/%u/#" in acl
    assert "fleet.server.ingest-9" not in acl  # negative: only the listed replicas
    text = conf.read_text()
    assert "require_certificate true" in text and "use_identity_as_username true" in text
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _listening(settings.broker.port):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "mosquitto did not come up"
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
