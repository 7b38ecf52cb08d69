"""The fleet simulator at scale: ``fleetctl simulate`` against a real server (SQLite, its
managed mosquitto, REST enrollment), every device a real agent with its own certificate,
then a real model rollout to all of them.

Time to all online counts from the first enrollment to the server's store seeing the last
device online; the baseline is the bare connection benchmark (minimal asyncio MQTT clients,
certificates made up front, nothing else) for the same number of devices in the same run.
Memory per device is the resident memory of the whole simulator (``fleetctl`` and its
worker processes, summed at the peak) growing between a 10-device run and the full run,
divided by the extra devices, so it includes each extra worker's own baseline.  The
ingest rate is telemetry batches stored per second over a steady window, against the
rate the fleet should send (devices / interval).

The rollout is the product's whole OTA path on every device: a new version of the
shipped model (same weights, version 1.1.0, signed into TUF by the server) rolled out
with canary 1 %, waves 50 %/100 %, unpaced, one gate (error_rate<0.05, judged on at
least 5 inferences from the wave) and a 10 s device probation; each agent refreshes
TUF metadata, downloads and verifies the package, self-tests it, switches its A/B
slot and commits after probation.  Its baseline is the same plan on the 10-device
fleet in the same run.

Then a federated run over the same fleet: three FedAvg rounds of the digits MLP,
each sampling 10 % of the devices (one local epoch on the labelled samples the
simulated sensors fed back), every device training in its real learning worker
and answering over its own MQTT session.  The figure is the mean round wall time
with 100 sampled devices, against a 10-device run (all sampled) in the same run.
Measured at 1,000
devices in ten worker processes of 100 (paho's select() loop cannot use descriptors
above 1023, so one process holds at most 100).  ``BENCH_SIM_DEVICES`` changes the size."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from fleet_server.config import ApiSettings, BrokerSettings, ServerSettings
from fleet_server.server import FleetServer, initialize

from . import bench_connections
from ._lab import free_port

DEVICES = int(os.environ.get("BENCH_SIM_DEVICES", "1000"))
SMALL = 10
INTERVAL = 10.0
STEADY_S = float(os.environ.get("BENCH_SIM_STEADY_S", "40"))
PROBATION_S = 10
PASSWORD = "bench-password-1"
NEW_VERSION = "1.1.0"
TRAIN_ROUNDS = 3


def _tree_rss(p: psutil.Process) -> float:
    total = 0
    for q in [p, *p.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker that has just exited
            total += q.memory_info().rss
    return total / 2**20


class Simulation:
    """One ``fleetctl simulate`` run, driven from outside: up, steady, rollout, Ctrl-C."""

    def __init__(self, server: FleetServer, token: str, work: Path, n: int, prefix: str) -> None:
        self.server, self.n, self.prefix = server, n, prefix
        env = {
            **os.environ,
            "FLEETCTL_SERVER": server.settings.api_url,
            "FLEETCTL_TOKEN": token,
            "FLEETCTL_CONFIG": str(work / "ctl.json"),
        }
        cmd = [str(Path(sys.executable).parent / "fleetctl"), "--json", "simulate"]
        cmd += ["--devices", str(n), "--prefix", prefix, "--data-dir", str(work / "sim")]
        cmd += ["--telemetry-interval", str(INTERVAL), "--probation", str(PROBATION_S)]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.peak = 0.0
        self._watcher = threading.Thread(target=self._watch_rss, daemon=True)
        self._watcher.start()

    def _watch_rss(self) -> None:
        try:
            p = psutil.Process(self.proc.pid)
            while self.proc.poll() is None:
                self.peak = max(self.peak, _tree_rss(p))
                time.sleep(0.5)
        except psutil.Error:
            pass

    def online(self) -> int:
        conn = self.server.store._conn()  # type: ignore[attr-defined]
        # fetchall ends the statement: one left open would pin this connection's snapshot
        rows = conn.execute(
            "SELECT count(*) FROM devices WHERE online = 1 AND id LIKE ?", (self.prefix + "-%",)
        ).fetchall()
        return int(rows[0][0])

    def wait_online(self, timeout: float = 1800) -> float:
        deadline = time.monotonic() + timeout
        while self.online() < self.n:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fleetctl simulate exited with code {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.online()} of {self.n} devices came online")
            time.sleep(1.0)
        return time.time()

    def finish(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=600)
        self._watcher.join(5)
        if self.proc.returncode != 0:
            raise RuntimeError(f"fleetctl simulate failed with exit code {self.proc.returncode}")
        doc: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        doc["peak_rss_mib"] = self.peak
        return doc


def _stored_between(server: FleetServer, since: float, until: float, prefix: str) -> int:
    conn = server.store._conn()  # type: ignore[attr-defined]
    row = conn.execute(
        "SELECT count(*) FROM telemetry WHERE ts >= ? AND ts < ? AND device_id LIKE ?",
        (since, until, prefix + "-%"),
    ).fetchall()
    return int(row[0][0])


def _new_version_package() -> bytes:
    """The shipped digits MLP rebuilt as 1.1.0: a real, signed, different package."""
    from edgefleet_contract.package import read_package
    from fleet_server.factory_models import DIST
    from fleet_server.modelkit import Network

    from ._digits import digits_package

    shipped = read_package(DIST / "digits-1.0.0-onnx-int8.efpkg")
    return digits_package(
        Network.from_package(shipped),
        name="digits",
        version=NEW_VERSION,
        flavor="onnx-int8",
        run_id="bench",
        created_at=0.0,
    )


def _roll_out(api: httpx.Client, sim: Simulation) -> tuple[float, int, str]:
    """Seconds from create to completed, devices that committed, and the final status."""
    started = time.monotonic()
    r = api.post(
        "/rollouts",
        json={
            "artifact": f"digits@{NEW_VERSION}:onnx-int8",
            "target": f"tag:simulated={sim.prefix}",
            "canary": "1%",
            "waves": "50%,100%",
            "pace": "100000/min",
            "probation": "0s",
            "gates": ["error_rate<0.05"],
            # Judged on real traffic, not passed for want of it: five inferences are one
            # telemetry batch of one device (0.5 readings/s, 10 s interval), so the wait
            # for evidence stays small against the OTA path this figure is about.
            "gate_min_samples": 5,
            # This figure is the OTA path's; the parent gate's label needs (hundreds from the
            # canary) are bench_gates' subject, so it is off here.
            "vs_parent": False,
            "device_timeout": "20m",
        },
    )
    r.raise_for_status()
    rollout_id = r.json()["id"]
    status = "pending"
    while status in ("pending", "canary", "wave"):
        time.sleep(2.0)
        status = api.get(f"/rollouts/{rollout_id}").json()["status"]
    elapsed = time.monotonic() - started
    committed = 0
    for i in range(sim.n):
        reported = sim.server.store.get_device(f"{sim.prefix}-{i:05d}").reported
        if (
            reported is not None
            and reported.model is not None
            and reported.model.version == NEW_VERSION
            and reported.update is not None
            and reported.update.phase == "committed"
        ):
            committed += 1
    return elapsed, committed, status


def _train(api: httpx.Client, sim: Simulation, fraction: float) -> dict[str, Any]:
    """Three rounds over ``fraction`` of the fleet; the finished run as the API shows it."""
    sampled = max(2, round(sim.n * fraction))
    r = api.post(
        "/training/runs",
        json={
            "model": "digits",
            "target": f"tag:simulated={sim.prefix}",
            "rounds": TRAIN_ROUNDS,
            "fraction": fraction,
            "min_clients": max(2, sampled // 2),
            "round_timeout_s": 600,
            "local": {"epochs": 1, "lr": 0.1, "batch_size": 16},
        },
    )
    r.raise_for_status()
    run_id = r.json()["id"]
    while True:
        time.sleep(2.0)
        doc: dict[str, Any] = api.get(f"/training/runs/{run_id}").json()
        if doc["status"] not in ("pending", "running"):
            return doc


def _rounds(doc: dict[str, Any]) -> tuple[float, float, str]:
    """Mean round wall time, mean participants per round, and the run's status."""
    rounds = doc.get("rounds") or []
    if not rounds:
        return float("nan"), 0.0, doc["status"]
    wall = sum(float(r["wall_s"]) for r in rounds) / len(rounds)
    people = sum(len(r["participants"]) for r in rounds) / len(rounds)
    return wall, people, f"{doc['status']}, {len(rounds)} rounds"


def run() -> list[dict[str, object]]:
    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-sim-"))
    settings = ServerSettings(
        data_dir=work / "server",
        api=ApiSettings(port=free_port()),
        broker=BrokerSettings(port=free_port()),
    )
    initialize(settings, admin_password=PASSWORD)
    server = FleetServer(settings)
    server.start()
    try:
        token = httpx.post(
            f"{settings.api_url}/api/v1/auth/login",
            json={"username": "admin", "password": PASSWORD},
        ).json()["token"]
        api = httpx.Client(
            base_url=f"{settings.api_url}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        r = api.post(
            "/artifacts/models",
            content=_new_version_package(),
            headers={"Content-Type": "application/octet-stream"},
        )
        r.raise_for_status()
        package_bytes = int(r.json()["size"])

        small_sim = Simulation(server, token, work, SMALL, "small")
        small_sim.wait_online()
        time.sleep(INTERVAL)  # some traffic for the gate
        small_rollout = _roll_out(api, small_sim)
        small_training = _rounds(_train(api, small_sim, 1.0))
        small = small_sim.finish()

        big_sim = Simulation(server, token, work, DEVICES, "big")
        all_online_at = big_sim.wait_online()
        steady_from = all_online_at + INTERVAL  # one interval to settle
        time.sleep(INTERVAL + STEADY_S)
        steady_to = time.time()
        big_rollout = _roll_out(api, big_sim)
        big_training = _rounds(_train(api, big_sim, 0.1))
        big = big_sim.finish()
        stored = _stored_between(server, steady_from, steady_to, "big")  # ingest has caught up
    finally:
        server.stop()
    bench_connections.DEVICES = DEVICES
    bare = bench_connections.run()
    bare_s = float(str(bare[1]["note"]).split("s ")[0])
    online_s = float(big["time_to_all_online_s"])
    per_device = (float(big["peak_rss_mib"]) - float(small["peak_rss_mib"])) / (DEVICES - SMALL)
    ingest = stored / (steady_to - steady_from)
    expected = DEVICES / INTERVAL
    big_s, big_done, big_status = big_rollout
    small_s, small_done, small_status = small_rollout
    return [
        {
            "benchmark": f"simulated devices to all online ({DEVICES:,}, enroll + connect)",
            "value": f"{online_s:.1f} s",
            "baseline": f"{bare_s:.1f} s bare MQTT clients (pre-made certs)",
            "ratio": f"{online_s / bare_s:.1f}x",
        },
        {
            "benchmark": "simulator memory per device (real agent, shared model)",
            "value": f"{per_device * 1024:.0f} KiB",
            "baseline": f"{small['peak_rss_mib']:.0f} MiB at {SMALL} devices",
            "ratio": f"{float(big['peak_rss_mib']):.0f} MiB at {DEVICES:,}",
        },
        {
            "benchmark": f"telemetry stored, every {INTERVAL:.0f} s per device",
            "value": f"{ingest:.1f} batches/s",
            "baseline": f"{expected:.1f} batches/s sent by design",
            "ratio": f"{ingest / expected:.2f}x",
        },
        {
            "benchmark": (
                f"rollout of a {package_bytes / 1024:.0f} KiB model to {DEVICES:,} real agents "
                f"(TUF, download, self-test, A/B, {PROBATION_S} s probation)"
            ),
            "value": (
                f"{big_s:.0f} s, {big_status}, {big_done:,} committed "
                f"({big_done / big_s * 60:.0f} devices/min)"
            ),
            "baseline": (
                f"{small_s:.0f} s for {SMALL} devices ({small_status}, {small_done} committed)"
            ),
            "ratio": f"{big_s / small_s:.1f}x the time for {DEVICES // SMALL}x the devices",
        },
        {
            "benchmark": (
                f"federated round over the simulated fleet (FedAvg, 10% of {DEVICES:,} sampled, "
                "1 local epoch)"
            ),
            "value": (
                f"{big_training[0]:.1f} s/round, {big_training[1]:.0f} devices/round "
                f"({big_training[2]})"
            ),
            "baseline": (
                f"{small_training[0]:.1f} s/round, {small_training[1]:.0f} devices/round "
                f"of {SMALL} ({small_training[2]})"
            ),
            "ratio": f"{big_training[0] / small_training[0]:.1f}x",
        },
        {
            "benchmark": "errors counted by the simulator",
            "value": f"{big['errors']} ({big['enrolled_now']} devices enrolled)",
            "baseline": "-",
            "ratio": "-",
        },
    ]
