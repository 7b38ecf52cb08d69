"""A small real fleet for the console's browser tests and screenshots.

A real fleet server (managed mosquitto, mTLS, SQLite) with real ``edge-agent``
processes enrolled through the API, plus "rich" devices: the agent's own MQTT
link (mTLS, spool) publishing batches with inference, drift and update reports,
because the agents here serve no model yet and so report system figures only.  Those
batches are synthetic (the README says so under its screenshots); the training run is a
real one (:meth:`ConsoleFleet.run_training`).
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from cryptography import x509

from agent.drift_monitor import AlertPolicy, DriftMonitor
from edgefleet_contract.codec import Codec
from edgefleet_contract.drift import build_reference
from edgefleet_contract.messages import (
    DriftStats,
    FeatureDrift,
    FirmwareRef,
    InferenceStats,
    LatencySummary,
    ModelRef,
    ReportedState,
    SpoolStats,
    SystemStats,
    Telemetry,
    UpdateReport,
)
from edgefleet_contract.topics import Channel
from fleet_server.auth import hash_password
from fleet_server.server import FleetServer, initialize

from .harness import (
    ADMIN_PASSWORD,
    admin_token,
    enroll_agent,
    fleet_link,
    server_settings,
    wait_for,
)

BIN = Path(sys.executable).parent
VIEWER_PASSWORD = "viewer-password-1"
OPERATOR_PASSWORD = "operator-password-1"
HISTORY_MINUTES = 50


class RichDevice:
    """A device link sending model telemetry (latency, confidence, drift) every ``period`` s."""

    def __init__(
        self,
        server: FleetServer,
        folder: Path,
        device_id: str,
        *,
        drifting: bool,
        chi2: bool = False,
    ) -> None:
        self.device_id = device_id
        self.drifting = drifting
        # chi2: a current agent's drift reports (tests against reference and baseline);
        # otherwise the PSI an older agent sends
        self._monitor = (
            DriftMonitor(
                build_reference(np.random.default_rng(0).normal(size=(2000, 8))),
                policy=AlertPolicy(burn_in_rows=400),
            )
            if chi2
            else None
        )
        self._np_rng = np.random.default_rng(1)
        self.link = fleet_link(server, folder, device_id, agent_version="0.1.0")
        parsed = x509.load_pem_x509_certificate((folder / "cert.pem").read_bytes())
        server.store.add_certificate(
            device_id, parsed.serial_number, parsed.not_valid_after_utc.timestamp(), time.time()
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._rng = random.Random(device_id)
        self._seq = 0

    def start(self, version: str, update: UpdateReport | None) -> None:
        self.link.start()
        now = time.time()
        self.link.report(
            ReportedState(
                device_id=self.device_id,
                ts=now,
                agent_version="0.1.0",
                hardware="rpi4",
                model=ModelRef(name="digits", version=version, sha256="0" * 64, runtime="onnx"),
                firmware=FirmwareRef(version="1.4.2", slot="a", hardware="rpi4"),
                health="degraded" if self.drifting else "ok",
                update=update,
            )
        )
        now = time.time()
        for minute in range(HISTORY_MINUTES, 0, -1):  # the last hour, one batch a minute
            batch = self._batch(now - 60 * minute, windows=120)  # 2 live batches a second
            self.link.send(Channel.TELEMETRY, Codec().encode(batch))
        self._thread.start()

    def _batch(self, ts: float | None = None, *, windows: int = 1) -> Telemetry:
        """One batch; ``windows`` > 1 stands for that many live windows in one batch."""
        self._seq += 1
        t, rng = ts or time.time(), self._rng
        wave = math.sin(self._seq / 6)
        shift = min(1.0, self._seq / 40) if self.drifting else 0.0
        p50 = 3.0 + 0.6 * wave + rng.random() * 0.3
        hist = [0] * 10
        for _ in range(200):
            hist[min(9, int(rng.betavariate(8 - 4 * shift, 1.2) * 10))] += 1
        return Telemetry(
            device_id=self.device_id,
            batch_id=f"r{self._seq:06d}",
            seq=self._seq,
            ts=t,
            window_s=0.5 * windows,
            system=SystemStats(
                cpu_percent=min(100, 22 + 9 * wave + rng.random() * 5),
                mem_used_bytes=int(1.6e9 + 1e8 * wave),
                mem_total_bytes=int(4e9),
                rss_bytes=int(9e7),
                disk_used_bytes=int(6e9),
                disk_total_bytes=int(3.2e10),
                uptime_s=1000 + self._seq,
            ),
            inference=InferenceStats(
                model="digits",
                version="1.3.0",
                count=200 * windows,
                errors=0,
                throughput_per_s=180 + 25 * wave + rng.random() * 10,
                latency=LatencySummary(
                    p50_ms=p50, p95_ms=p50 * 1.8, p99_ms=p50 * 2.6, max_ms=p50 * 3, mean_ms=p50
                ),
                confidence_hist=hist,
            ),
            # drift comes with every third batch, as an agent tests it only once enough
            # rows arrived: the chart must draw across the batches without it
            drift=None
            if self._seq % 3
            else self._monitor.window(self._np_rng.normal(0.3, 1.0, size=(200, 8)))
            if self._monitor is not None
            else DriftStats(
                samples=200,
                score=0.04 + 0.4 * shift + 0.02 * rng.random(),
                features=[
                    FeatureDrift(
                        feature=f, psi=(0.04 + 0.4 * shift) / (1 + i) + 0.01 * rng.random()
                    )
                    for i, f in enumerate((21, 36, 43, 5))
                ],
            ),
            spool=SpoolStats(dropped_total=3 * self._seq if self.drifting else 0),
        )

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.link.send(Channel.TELEMETRY, Codec().encode(self._batch()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.link.stop(timeout=2)


class ConsoleFleet:
    """Server + agents + rich devices, torn down in reverse order by :meth:`close`."""

    def __init__(self, tmp: Path, *, agents: int = 3, extra_devices: int = 0) -> None:
        self.tmp = tmp
        settings = server_settings(tmp / "fleet")
        initialize(settings, admin_password=ADMIN_PASSWORD)  # type: ignore[arg-type]
        self.server = FleetServer(settings)  # type: ignore[arg-type]
        self.server.start()
        self.url = self.server.settings.api_url
        self.agents: list[subprocess.Popen[bytes]] = []
        self.rich: list[RichDevice] = []
        self.training_run = ""  # the id of :meth:`run_training`'s run, once it ran
        self.learner_ids = ["learner-1", "learner-2", "learner-3"]  # its devices
        self.agent_ids = [f"gw-{i:02d}" for i in range(agents)]
        now = time.time()
        store = self.server.store
        for name, role, password in (
            ("vera", "viewer", VIEWER_PASSWORD),
            ("otto", "operator", OPERATOR_PASSWORD),
        ):
            store.create_user(name, role=role, password_hash=hash_password(password), now=now)
        sites = ("berlin", "lyon", "porto", "oslo")
        for i in range(extra_devices):
            store.create_device(
                f"sensor-{i:04d}",
                name=f"sensor {i}",
                tags={"site": sites[i % len(sites)], "line": str(i % 3)},
                now=now,
            )
        self.token = admin_token(self.url)
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def start_agents(self) -> None:
        """Enroll (API + ``edge-agent enroll``) and run every agent as its own process
        (once: a test run alone starts them, a later one finds them running)."""
        if self.agents:
            return
        for i, device_id in enumerate(self.agent_ids):
            data_dir = self.tmp / "agents" / device_id
            tags = {"site": ("berlin", "lyon")[i % 2], "kind": "gw"}
            enroll_agent(self.url, self.token, device_id, data_dir, tags=tags)
            log = (self.tmp / f"{device_id}.log").open("ab")
            self.agents.append(
                subprocess.Popen(
                    [str(BIN / "edge-agent"), "run", "--data-dir", str(data_dir)],
                    env={
                        **os.environ,
                        "EDGE_AGENT_TELEMETRY_INTERVAL_S": "0.5",
                        "EDGE_AGENT_FIRMWARE_VERSION": "1.4.2",
                        "EDGE_AGENT_HARDWARE": "jetson-nano",
                    },
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )

    def start_rich(self) -> None:
        plans = [
            ("cam-01", "1.3.0", False, None),
            ("cam-02", "1.3.0", True, None),
            (
                "cam-03",
                "1.2.0",
                False,
                UpdateReport(
                    desired_version=2,
                    kind="model",
                    target="models/digits/1.3.0/digits.efpkg",
                    phase="failed",
                    progress=0.4,
                    error="self-test mismatch",
                    ts=time.time(),
                ),
            ),
        ]
        for device_id, version, drifting, update in plans:
            chi2 = device_id == "cam-01"
            self.server.store.create_device(
                device_id, name=device_id, tags={"site": "porto", "kind": "camera"}, now=time.time()
            )
            device = RichDevice(
                self.server, self.tmp / "rich" / device_id, device_id, drifting=drifting, chi2=chi2
            )
            device.start(version, update)
            self.rich.append(device)

    def run_training(self, rounds: int = 5) -> str:
        """A real federated run, its id: three ``edge-agent`` processes holding non-IID
        shares of the digits train FedAvg rounds over the managed broker; the run's
        candidate is judged (held-out accuracy against its parent) but not built."""
        from fleet_server.federation.spec import LocalTraining, RunSpec

        from .fl_helpers import MODEL, learning_agents, write_start_package

        server = self.server
        write_start_package(server.settings.data_dir / "models")
        server.training.build_candidates = False
        spec = RunSpec.model_validate(
            {
                "model": MODEL,
                "target": "tag:fl=proc",
                "rounds": rounds,
                "min_clients": 3,
                "round_timeout_s": 300,
                "local": LocalTraining(epochs=2, lr=0.2, batch_size=16),
            }
        )
        with learning_agents(server, self.token, self.learner_ids, self.tmp / "fl", seed=3):
            run = server.training.start_run(spec, actor="otto")
            wait_for(
                lambda: (
                    server.store.get_training_run(run.id).status  # type: ignore[attr-defined]
                    not in ("pending", "running")
                ),
                600,
                f"training run {run.id} to end",
            )
        final = server.store.get_training_run(run.id)  # type: ignore[attr-defined]
        assert final.status == "completed", final.detail
        return str(run.id)

    def push_model(self, path: Path) -> dict[str, object]:
        """Register a model package through the API (verified, stored, signed)."""
        r = httpx.post(
            f"{self.url}/api/v1/artifacts/models",
            headers={**self.headers, "Content-Type": "application/octet-stream"},
            content=path.read_bytes(),
            timeout=60,
        )
        r.raise_for_status()
        return dict(r.json())

    def wait_online(self, ids: list[str], timeout: float = 90) -> None:
        store = self.server.store
        wait_for(lambda: all(store.get_device(d).online for d in ids), timeout, f"{ids} online")

    def close(self) -> None:
        for device in self.rich:
            device.stop()
        for agent in self.agents:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
        for agent in self.agents:
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
        self.server.stop()
