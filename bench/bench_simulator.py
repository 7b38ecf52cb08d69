"""The fleet simulator at scale: ``fleetctl simulate`` against a real server (SQLite, its
managed mosquitto, REST enrollment), every device a real agent with its own certificate.

Time to all online counts from the first enrollment to the server's store seeing the last
device online; the baseline is the bare connection benchmark (minimal asyncio MQTT clients,
certificates made up front, nothing else) for the same number of devices in the same run.
Memory per device is the resident memory of the whole simulator (``fleetctl`` and its
worker processes, summed at the peak) growing between a 10-device run and the full run,
divided by the extra devices, so it includes each extra worker's own baseline.  The
ingest rate is telemetry batches stored per second over the steady window, against the
rate the fleet should send (devices / interval).  Measured at 1,000 devices in ten worker
processes of 100 (paho's select() loop cannot use descriptors above 1023, so one process
holds at most 100).  ``BENCH_SIM_DEVICES`` changes the size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from fleet_server.config import ApiSettings, BrokerSettings, ServerSettings
from fleet_server.server import FleetServer, initialize

from . import bench_connections
from ._lab import free_port, machine, table

DEVICES = int(os.environ.get("BENCH_SIM_DEVICES", "1000"))
SMALL = 10
INTERVAL = 10.0
STEADY_S = float(os.environ.get("BENCH_SIM_STEADY_S", "40"))
PASSWORD = "bench-password-1"


def _tree_rss(p: psutil.Process) -> float:
    total = 0
    for q in [p, *p.children(recursive=True)]:
        try:
            total += q.memory_info().rss
        except psutil.Error:  # a worker that has just exited
            pass
    return total / 2**20


def _peak_rss(proc: subprocess.Popen[str], peak: list[float]) -> None:
    try:
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(p))
            time.sleep(0.5)
    except psutil.Error:
        pass


def _simulate(
    server: FleetServer, token: str, work: Path, n: int, prefix: str
) -> dict[str, object]:
    env = {
        **os.environ,
        "FLEETCTL_SERVER": server.settings.api_url,
        "FLEETCTL_TOKEN": token,
        "FLEETCTL_CONFIG": str(work / "ctl.json"),
    }
    cmd = [
        str(Path(sys.executable).parent / "fleetctl"),
        "--json",
        "simulate",
        "--devices",
        str(n),
        "--prefix",
        prefix,
        "--data-dir",
        str(work / "sim"),
        "--telemetry-interval",
        str(INTERVAL),
        "--duration",
        str(STEADY_S),
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    peak = [0.0]
    watcher = threading.Thread(target=_peak_rss, args=(proc, peak), daemon=True)
    watcher.start()
    out, _ = proc.communicate(timeout=3600)
    watcher.join(5)
    if proc.returncode != 0:
        raise RuntimeError(f"fleetctl simulate failed with exit code {proc.returncode}")
    doc = json.loads(out.strip().splitlines()[-1])
    doc["peak_rss_mib"] = peak[0]
    return dict(doc)


def _stored_between(server: FleetServer, since: float, until: float, prefix: str) -> int:
    conn = server.store._conn()  # type: ignore[attr-defined]
    row = conn.execute(
        "SELECT count(*) FROM telemetry WHERE ts >= ? AND ts < ? AND device_id LIKE ?",
        (since, until, prefix + "-%"),
    ).fetchone()
    return int(row[0])


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
        small = _simulate(server, token, work, SMALL, "small")
        big = _simulate(server, token, work, DEVICES, "big")
        online_s = float(big["time_to_all_online_s"])  # type: ignore[arg-type]
        # the steady window: from all online (plus one interval to settle) to the stop
        steady_from = float(big["all_online_at"]) + INTERVAL  # type: ignore[arg-type]
        steady_to = float(big["stopping_at"])  # type: ignore[arg-type]
        steady_s = max(steady_to - steady_from, 1.0)
        stored = _stored_between(server, steady_from, steady_to, "big")
    finally:
        server.stop()
    bench_connections.DEVICES = DEVICES
    bare = bench_connections.run()
    bare_s = float(str(bare[1]["note"]).split("s ")[0])
    per_device = (float(big["peak_rss_mib"]) - float(small["peak_rss_mib"])) / (DEVICES - SMALL)  # type: ignore[arg-type]
    ingest = stored / steady_s
    expected = DEVICES / INTERVAL
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
            "ratio": f"{float(big['peak_rss_mib']):.0f} MiB at {DEVICES:,}",  # type: ignore[arg-type]
        },
        {
            "benchmark": f"telemetry stored, every {INTERVAL:.0f} s per device",
            "value": f"{ingest:.1f} batches/s",
            "baseline": f"{expected:.1f} batches/s sent by design",
            "ratio": f"{ingest / expected:.2f}x",
        },
        {
            "benchmark": "errors counted by the simulator",
            "value": f"{big['errors']} ({big['enrolled_now']} devices enrolled)",
            "baseline": "-",
            "ratio": "-",
        },
    ]


if __name__ == "__main__":
    print(f"machine: {machine()}")
    print(table(run()))
