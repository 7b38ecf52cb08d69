"""Federated round overhead at fleet scale: 10, 100 and 1,000 sampled devices.

The server side is the product's whole path: a SQLite store holding a fleet ten
times the sample (every device online with learning telemetry), the
``TrainingService`` (eligibility census over the fleet, Flower's FedAvg sampling
10 %, the MQTT grid, update validation, held-out evaluation, the round's record
and checkpoint), ``ServerLink`` and ingest through the real mosquitto with mTLS.
The devices are one separate process (:mod:`._fl_responder`) that answers every
instruction over the native wire at once, so a round's wall time is what the
server, the broker and the wire cost per round, without any device's training
time (which on a real fleet runs in parallel on the devices).

Figure: median round wall time of rounds 2-4 (round 1 warms caches), with the
worst round beside it; the baseline is the 10-device round in the same run.
``BENCH_FL_SCALE`` (default ``10,100,1000``) picks the sample sizes.  The same
benchmark on the code before this change (same machine, same load) gave 0.68 s
at 100 and 10.4 s at 1,000 sampled; a profile put the time in Flower's
``Array.numpy()`` (the round's weights parsed again per device and per reply),
``np.save`` per reply array, and one telemetry query plus validation per
targeted device in the eligibility census.  The simulator row further down
(3.8 s at 100 of 1,000) is whole rounds, with 100 devices training on the same
two cores as the server.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgefleet_common.mqtt import Endpoint
from edgefleet_contract.messages import LearningStats, Telemetry
from edgefleet_contract.package import read_package
from edgefleet_contract.topics import Channel
from fleet_server.federation.candidate import digits_heldout
from fleet_server.federation.packages import DIST
from fleet_server.federation.runner import TrainingService
from fleet_server.federation.spec import LocalTraining, RunSpec
from fleet_server.ingest import Ingest
from fleet_server.link import ServerLink
from fleet_server.store import open_store
from tests.harness import system_stats

from ._lab import Lab

ROUNDS = 4
RESPONDER = "fl-bench-devices"
"""The one identity the benchmark's broker lets speak for every device (ACL added below)."""


def _lab() -> Lab:
    """A lab whose ACL also lets the responder answer on every ``devices/{id}/fl/out``."""
    lab = Lab()
    acl = lab.broker.layout.acl
    acl.write_text(f"user {RESPONDER}\ntopic readwrite devices/#\n\n" + acl.read_text())
    lab.broker.reload()
    time.sleep(1.0)  # mosquitto re-reads the ACL on SIGHUP
    return lab


SIZES = [int(n) for n in os.environ.get("BENCH_FL_SCALE", "10,100,1000").split(",")]


def _telemetry(device_id: str, now: float) -> Telemetry:
    return Telemetry(
        device_id=device_id,
        batch_id=f"b-{device_id}",
        seq=1,
        ts=now,
        window_s=10,
        learning=LearningStats(labelled_samples=200, new_samples=50),
        system=system_stats("ac", cpu_percent=5, uptime_s=100),
    )


def _fleet(store: Any, n: int, prefix: str) -> None:
    now = time.time()
    for i in range(n):
        device_id = f"{prefix}-{i:05d}"
        store.create_device(device_id, name=device_id, tags={"fleet": prefix}, now=now)
        store.set_presence(device_id, online=True, ts=now)
    batches = [_telemetry(f"{prefix}-{i:05d}", now) for i in range(n)]
    store.insert_telemetry(batches, received_at=now)


def rounds(lab: Lab, sampled: int) -> list[float]:
    """Wall time of each round of a FedAvg run sampling ``sampled`` of ``10 * sampled``."""
    work = Path(tempfile.mkdtemp(prefix="edgefleet-flscale-"))
    store = open_store(work / "fleet.db")
    prefix = f"s{sampled}"
    _fleet(store, sampled * 10, prefix)
    service: list[TrainingService] = []
    ingest = Ingest(
        store, batch_size=1000, on_frame=lambda d, f: service[0].deliver(d, f) if service else None
    )
    link = ServerLink(
        Endpoint("127.0.0.1", lab.broker.port, lab.server), ingest, client_id=f"flscale-{sampled}"
    )
    ingest._acker = link.acknowledge
    ingest.start()
    link.start()
    link.wait_connected(10)
    package = read_package(DIST / "digits-1.0.0-onnx-float32.efpkg")
    training = TrainingService(
        store,  # type: ignore[arg-type]
        lambda device_id, frame: link.send_raw(device_id, Channel.FL_IN, frame),
        packages=lambda name, version: package,
        heldout=digits_heldout,
        candidates_dir=work / "candidates",
        max_payload=256 * 1024,
        build_candidates=False,
    )
    service.append(training)
    tls = lab.identity(RESPONDER)
    responder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench._fl_responder",
            str(lab.broker.port),
            str(tls.ca_file),
            str(tls.cert_file),
            str(tls.key_file),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert responder.stdout is not None and responder.stdout.readline().strip() == "ready"
        spec = RunSpec(
            model="digits",
            target=f"tag:fleet={prefix}",
            rounds=ROUNDS,
            fraction=0.1,
            min_clients=sampled,
            round_timeout_s=300,
            local=LocalTraining(epochs=1),
            max_update_norm=1e6,
        )
        run = training.start_run(spec, actor="bench")
        while store.get_training_run(run.id).status in ("pending", "running"):
            time.sleep(0.2)
        final = store.get_training_run(run.id)
        if final.status != "completed":
            raise RuntimeError(f"run at {sampled} sampled ended {final.status}: {final.detail}")
        return [r.wall_s for r in store.list_rounds(run.id)]
    finally:
        if responder.stdin is not None:
            responder.stdin.close()
        responder.wait(30)
        link.stop()
        ingest.stop()
        store.close()


def run() -> list[dict[str, object]]:
    lab = _lab()
    results: dict[int, list[float]] = {}
    try:
        for sampled in SIZES:
            results[sampled] = rounds(lab, sampled)
    finally:
        lab.close()
    base = statistics.median(results[SIZES[0]][1:])
    rows: list[dict[str, object]] = []
    for sampled, walls in results.items():
        steady = walls[1:]
        median = statistics.median(steady)
        rows.append(
            {
                "benchmark": f"FL round overhead, {sampled:,} sampled of {sampled * 10:,}",
                "value": f"{median:.2f} s",
                "baseline": f"{base:.2f} s at {SIZES[0]:,} sampled",
                "ratio": f"{median / base:.1f}x",
                "note": f"worst {max(steady):.2f} s; rounds {', '.join(f'{w:.2f}' for w in walls)}",
            }
        )
    return rows
