"""Running the real ``edge-agent run`` process in tests, and watching what it publishes.

``device_dir`` lays out an enrolled device (key, certificate, CA, enrollment
record) from the test CA without a fleet server; ``AgentProcess`` starts the
console script with that data dir; ``Watcher`` is the server side of the wire:
a paho v5 client with a persistent session, so messages queued while it was
cut off (a broker restart) are delivered when it reconnects.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import localclient
from agent.identity import save_identity
from edgefleet_common.mqtt import TlsFiles, tls_context
from edgefleet_contract.codec import Codec, Rejected
from edgefleet_contract.messages import ReportedState, Telemetry

from .harness import Pki, wait_for

BIN = Path(sys.executable).parent
DIST = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models"


def device_dir(pki: Pki, data_dir: Path, device_id: str, broker_port: int) -> Path:
    """An enrolled device's data dir from the test CA, without a fleet server."""
    tls = pki.identity(device_id)
    assert tls.cert_file is not None and tls.key_file is not None
    save_identity(
        data_dir,
        device_id=device_id,
        server_url="http://127.0.0.1:9",
        broker_host="127.0.0.1",
        broker_port=broker_port,
        key_pem=tls.key_file.read_bytes(),
        cert_pem=tls.cert_file.read_bytes(),
        ca_pem=tls.ca_file.read_bytes(),
    )
    return data_dir


class AgentProcess:
    def __init__(self, data_dir: Path, model: Path | None, **env: str) -> None:
        self.data_dir = data_dir
        self.log = data_dir / "agent.log"
        settings = {
            "EDGE_AGENT_TELEMETRY_INTERVAL_S": "0.2",
            "EDGE_AGENT_LOCAL_API__PORT": "0",
            "EDGE_AGENT_LOG_FORMAT": "text",
            **({"EDGE_AGENT_MODEL": str(model)} if model else {}),
            **env,
        }
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "edge-agent"), "run", "--data-dir", str(data_dir)],
                env={**os.environ, **settings},
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    @property
    def address(self) -> str:
        path = self.data_dir / "local-api.addr"
        wait_for(lambda: path.exists() or self.proc.poll() is not None, 60, "local API address")
        assert self.proc.poll() is None, self.log.read_text()
        return path.read_text().strip()

    def predict(self, rows: np.ndarray) -> dict[str, Any]:
        status, doc = localclient.predict(self.address, rows)
        assert status == 200, doc
        assert isinstance(doc, dict)
        return doc

    def kill(self, sig: int = signal.SIGKILL) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)


def spool_depth(data_dir: Path) -> int:
    """Rows in the agent's outbox, read-only (the agent may be running)."""
    path = data_dir / "spool.db"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        db.close()


def spooled_telemetry(data_dir: Path) -> list[Telemetry]:
    db = sqlite3.connect(f"file:{data_dir / 'spool.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT topic, payload FROM outbox ORDER BY id").fetchall()
    finally:
        db.close()
    codec, out = Codec(), []
    for topic, payload in rows:
        if topic.endswith("/telemetry"):
            result = codec.decode_as(Telemetry, bytes(payload), topic=topic)
            assert not isinstance(result, Rejected), result
            out.append(result)
    return out


class Watcher:
    """Telemetry and reported state of the devices, as the fleet server would see them."""

    def __init__(self, tls: TlsFiles, port: int, client_id: str) -> None:
        self.telemetry: list[Telemetry] = []
        self.states: list[ReportedState] = []
        self._codec = Codec()
        self._lock = threading.Lock()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self._client.tls_set_context(tls_context(tls))
        self._client.reconnect_delay_set(0.1, 1)
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._connected = threading.Event()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self._client.connect("127.0.0.1", port, keepalive=30, clean_start=False, properties=props)
        self._client.loop_start()
        wait_for(self._connected.is_set, 20, "watcher connected")

    def _on_connect(self, c: object, u: object, f: Any, reason: Any, p: object) -> None:
        if not f.session_present:
            self._client.subscribe([("devices/+/telemetry", 1), ("devices/+/state", 1)])
        self._connected.set()

    def _on_message(self, c: object, u: object, msg: paho.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        if msg.topic.endswith("/telemetry"):
            result: object = self._codec.decode_as(Telemetry, payload, topic=msg.topic)
            with self._lock:
                if isinstance(result, Telemetry):
                    self.telemetry.append(result)
        elif msg.topic.endswith("/state") and payload:
            result = self._codec.decode_as(ReportedState, payload, topic=msg.topic)
            with self._lock:
                if isinstance(result, ReportedState):
                    self.states.append(result)

    def batches(self, device_id: str) -> list[Telemetry]:
        with self._lock:
            return [t for t in self.telemetry if t.device_id == device_id]

    def state(self, device_id: str) -> ReportedState | None:
        with self._lock:
            mine = [s for s in self.states if s.device_id == device_id]
        return mine[-1] if mine else None

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
