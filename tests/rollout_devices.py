"""Simulated devices for rollout tests: real :class:`DeviceLink` sessions (mTLS, ACL,
spool) whose command handler plays the device updater.

It acknowledges ``set_desired``, reports update phases in its retained state,
"switches" model and sends telemetry from the model it runs — a model marked
bad errs on 30% of its inferences, which is what a health gate must catch.
Shared by the rollout end-to-end tests and the console's browser tests.
"""

from __future__ import annotations

import contextlib
import functools
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

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
from fleet_server.server import FleetServer, initialize

from .harness import ADMIN_PASSWORD, admin_token, device_endpoint, server_settings, wait_for
from .ota_server import add_digits


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
        self.rng = random.Random(device_id)
        """The device's own random draws (its answers, its batch ids), seeded by its id."""
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
            batch = self.batch()
            assert self.link is not None
            self.link.send(Channel.TELEMETRY, Codec().encode(batch))

    def batch(self) -> Telemetry:
        """The next telemetry batch (a subclass changes what its model measures)."""
        errors = 30 if self.version in self.BAD else 0
        return self.telemetry(self.inference(count=100, errors=errors, throughput=200))

    def inference(self, count: int, errors: int, throughput: float, **extra: Any) -> InferenceStats:
        """Inference figures of the version this device runs, with a fixed latency."""
        return InferenceStats(
            model="digits",
            version=self.version,
            count=count,
            errors=errors,
            throughput_per_s=throughput,
            latency=LatencySummary(p50_ms=1, p95_ms=3, p99_ms=4, max_ms=5, mean_ms=1),
            **extra,
        )

    def telemetry(self, inference: InferenceStats, **extra: Any) -> Telemetry:
        """A half-second batch with the next sequence number and a fresh batch id."""
        return Telemetry(
            device_id=self.id,
            batch_id=f"boot0-{self._seq}-{self.rng.getrandbits(32)}",
            seq=self._seq,
            ts=time.time(),
            window_s=0.5,
            inference=inference,
            **extra,
        )


def start_server(settings: ServerSettings, packages: Path | None = None) -> FleetServer:
    """The real server; with ``packages``, digits 1.0.0, 2.0.0 and 3.0.0 are pushed to its
    real registry (TUF targets) first, so rollouts resolve through it."""
    server = FleetServer(settings)
    if packages is not None:
        add_digits(server.artifacts, packages, ("1.0.0", "2.0.0", "3.0.0"))
    server.start()
    return server


class Api:
    """The server's REST API as the admin; each call waits up to :attr:`timeout_s`."""

    timeout_s = 30.0

    def __init__(self, server: FleetServer) -> None:
        self.url = server.settings.api_url
        self.headers = {"Authorization": f"Bearer {admin_token(self.url)}"}

    def post(self, path: str, body: Any = None) -> Any:
        r = httpx.post(
            f"{self.url}/api/v1{path}", json=body, headers=self.headers, timeout=self.timeout_s
        )
        assert r.status_code < 300, r.text
        return r.json()

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.url}/api/v1{path}", headers=self.headers, timeout=self.timeout_s)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, rid: str, statuses: set[str], timeout: float = 90) -> dict[str, Any]:
        wait_for(lambda: self.get(f"/rollouts/{rid}")["status"] in statuses, timeout, str(statuses))
        out: dict[str, Any] = self.get(f"/rollouts/{rid}")
        return out


D = TypeVar("D", bound=SimDevice)


@dataclass
class RolloutFleet(Generic[D]):
    """A running server with its simulated devices, as the rollout tests drive them."""

    settings: ServerSettings
    server: FleetServer
    devices: list[D] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.settings.api_url

    @functools.cached_property
    def api(self) -> Api:
        """The REST API as the admin (logged in once, on first use)."""
        return Api(self.server)

    def wait_running(self, version: str) -> None:
        """Until every device has reported that it runs digits ``version``."""
        store = self.server.store
        wait_for(
            lambda: all(store.get_device(d.id).model_version == version for d in self.devices),
            60,
            "reported state",
        )


@contextlib.contextmanager
def rollout_fleet(
    folder: Path, prefix: str, count: int, device: type[D]
) -> Iterator[RolloutFleet[D]]:
    """An initialised server with digits 1.0.0-3.0.0 in its registry and ``count`` devices
    ``prefix-0``… online; all are stopped on the way out (``fleet.server`` may be
    replaced by a restarted one meanwhile)."""
    settings = server_settings(folder / "fleet")
    assert isinstance(settings, ServerSettings)
    initialize(settings, admin_password=ADMIN_PASSWORD)
    fleet: RolloutFleet[D] = RolloutFleet(settings, start_server(settings, folder / "packages"))
    try:
        fleet.devices = [
            device(fleet.server, folder / "devs" / f"{prefix}-{i}", f"{prefix}-{i}")
            for i in range(count)
        ]
        for d in fleet.devices:
            d.start()
        wait_for(lambda: fleet.server.store.count_online() == count, 60, "all devices online")
        yield fleet
    finally:
        for d in fleet.devices:
            d.stop()
        fleet.server.stop()
