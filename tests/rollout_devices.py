"""Simulated devices for rollout tests: real :class:`DeviceLink` sessions (mTLS, ACL,
spool) whose command handler plays the device updater.

It acknowledges ``set_desired``, reports update phases in its retained state,
"switches" model and sends telemetry from the model it runs — a model marked
bad errs on 30% of its inferences, which is what a health gate must catch.
Shared by the rollout end-to-end tests and the console's browser tests.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from agent.link import DeviceLink
from agent.spool import DrainPolicy, Spool
from edgefleet_common.mqtt import TlsFiles
from edgefleet_contract.codec import Codec
from edgefleet_contract.messages import (
    Command,
    CommandAck,
    DesiredState,
    InferenceStats,
    LatencySummary,
    ModelRef,
    ReportedState,
    Telemetry,
    UpdateReport,
)
from edgefleet_contract.topics import Channel
from fleet_server.config import ServerSettings
from fleet_server.pki import write_private
from fleet_server.server import FleetServer

from .harness import admin_token, device_endpoint, wait_for
from .ota_server import DIGITS, model_version


class SimDevice:
    """A device whose updater is played by this class, over the real agent link."""

    BAD = {"3.0.0"}

    def __init__(self, server: FleetServer, folder: Path, device_id: str) -> None:
        self.id = device_id
        self.folder = folder
        self.version = "1.0.0"
        self.applied = 0
        self.link: DeviceLink | None = None
        self.port = server.settings.broker.port
        server.store.create_device(device_id, name=device_id, tags={"site": "e2e"}, now=time.time())
        cert, key = server.ca.issue_client_cert(device_id, validity_s=3600, now=time.time())
        folder.mkdir(parents=True)
        write_private(folder / "key.pem", key)
        (folder / "cert.pem").write_bytes(cert)
        serial = x509.load_pem_x509_certificate(cert).serial_number
        server.store.add_certificate(device_id, serial, time.time() + 3600, time.time())
        self.tls = TlsFiles(server.ca.cert_file, folder / "cert.pem", folder / "key.pem")
        self.endpoint = device_endpoint(server, device_id, self.tls)
        self._stop = threading.Event()
        self._seq = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        spool = Spool(self.folder / "spool.db", max_bytes=10**7, max_age_s=1e6)
        self.link = DeviceLink(
            self.id,
            self.endpoint,
            spool,
            agent_version="sim",
            policy=DrainPolicy(500, 500, 50),
            on_command=self._on_command,
        )
        self._stop.clear()
        self.link.start()
        self.report(None)
        threading.Thread(target=self._telemetry, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self.link is not None:
            self.link.stop(timeout=2)

    def report(self, update: UpdateReport | None) -> None:
        assert self.link is not None
        model = ModelRef(name="digits", version=self.version, sha256="ab" * 32, runtime="onnx")
        self.link.report(
            ReportedState(
                device_id=self.id,
                ts=time.time(),
                agent_version="sim",
                health="ok",
                model=model,
                desired_version=self.applied,
                update=update,
            )
        )

    def _on_command(self, command: Command) -> None:
        assert self.link is not None
        self.link.ack_command(
            CommandAck(device_id=self.id, command_id=command.id, ts=time.time(), status="accepted")
        )
        if command.name == "set_desired":
            desired = DesiredState.model_validate(command.args)
            threading.Thread(target=self._update, args=(desired,), daemon=True).start()

    def _update(self, desired: DesiredState) -> None:
        with self._lock:
            if desired.version <= self.applied:
                return
            target = desired.model
            if target is None or target.version == self.version:
                self.applied = desired.version
                self.report(None)
                return
            for phase in ("downloading", "verifying", "switching", "probation", "committed"):
                if phase == "switching":
                    self.version = target.version
                if phase == "committed":
                    self.applied = desired.version
                update = UpdateReport(
                    desired_version=desired.version,
                    kind="model",
                    target=target.target,
                    phase=phase,  # type: ignore[arg-type]
                    ts=time.time(),
                )
                self.report(update)
                time.sleep(0.05)

    def _telemetry(self) -> None:
        while not self._stop.wait(0.5):
            self._seq += 1
            errors = 30 if self.version in self.BAD else 0
            batch = Telemetry(
                device_id=self.id,
                batch_id=f"boot0-{self._seq}-{int(time.time() * 1000)}",
                seq=self._seq,
                ts=time.time(),
                window_s=0.5,
                inference=InferenceStats(
                    model="digits",
                    version=self.version,
                    count=100,
                    errors=errors,
                    throughput_per_s=200,
                    latency=LatencySummary(p50_ms=1, p95_ms=3, p99_ms=4, max_ms=5, mean_ms=1),
                ),
            )
            assert self.link is not None
            self.link.send(Channel.TELEMETRY, Codec().encode(batch))


def start_server(settings: ServerSettings, packages: Path | None = None) -> FleetServer:
    """The real server; with ``packages``, digits 1.0.0, 2.0.0 and 3.0.0 are pushed to its
    real registry (TUF targets) first, so rollouts resolve through it."""
    server = FleetServer(settings)
    if packages is not None:
        packages.mkdir(parents=True, exist_ok=True)
        for version in ("1.0.0", "2.0.0", "3.0.0"):
            path = DIGITS if version == "1.0.0" else model_version(packages, version)
            server.artifacts.add_model(path, lineage={"source": "test"}, actor="test")
    server.start()
    return server


class Api:
    def __init__(self, server: FleetServer) -> None:
        self.url = server.settings.api_url
        self.headers = {"Authorization": f"Bearer {admin_token(self.url)}"}

    def post(self, path: str, body: Any = None) -> Any:
        r = httpx.post(f"{self.url}/api/v1{path}", json=body, headers=self.headers, timeout=30)
        assert r.status_code < 300, r.text
        return r.json()

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.url}/api/v1{path}", headers=self.headers, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, rid: str, statuses: set[str], timeout: float = 90) -> dict[str, Any]:
        wait_for(lambda: self.get(f"/rollouts/{rid}")["status"] in statuses, timeout, str(statuses))
        out: dict[str, Any] = self.get(f"/rollouts/{rid}")
        return out
