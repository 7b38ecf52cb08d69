"""Federated round overhead through the real broker, and agent memory during a round.

Overhead: N devices, each with the agent's real MQTT link (mTLS, own ACL'd
topics) and learning worker, in one process; the server side is the real
``ServerLink`` -> ingest -> ``MqttGrid`` path running Flower's FedAvg.  Per
round: wall time of the round minus the slowest participant's local training
time (measured by the worker itself), i.e. what the transport, serialisation,
scheduling and aggregation cost.  Goal: <= 0.5 s at 10 clients.  On this shared
2-core machine all N devices and the server compete for the same cores.

Memory: an agent-like process (link, spool, samples, worker) at idle, then
after it handled one training instruction (edgefleet's native envelope: the
device does not import Flower for a plain round).  Baseline: the same process
idle."""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.learning.worker import LearningWorker
from agent.link import DeviceLink
from agent.samples import SampleStore
from agent.spool import DrainPolicy, Spool
from edgefleet_common import flower_compat
from edgefleet_common.mqtt import Endpoint
from edgefleet_contract.topics import Channel
from fleet_server.federation.app import run_rounds
from fleet_server.federation.grid import MqttGrid
from fleet_server.federation.spec import LocalTraining, RunSpec
from fleet_server.ingest import Ingest
from fleet_server.link import ServerLink
from fleet_server.modelkit.digits import PREPROCESSING, split
from fleet_server.modelkit.partition import dirichlet_parts
from fleet_server.store import open_store

from ._lab import Lab, table
from .bench_federated import start_network

ROUNDS = 5
LOCAL = LocalTraining(epochs=1, lr=0.1, batch_size=16)


def overhead(lab: Lab, clients: int) -> tuple[float, float, float]:
    """(median overhead s, median round s, median slowest training s) over ROUNDS rounds."""
    data = split()
    store = open_store(Path(tempfile.mkdtemp()) / "fleet.db")
    ids = [f"flb{clients}-{i:03d}" for i in range(clients)]
    for device_id in ids:
        store.create_device(device_id, name=device_id, tags={}, now=time.time())
    grid: MqttGrid | None = None
    ingest = Ingest(
        store, batch_size=1000, on_frame=lambda d, f: grid.deliver(d, f) if grid else None
    )
    link = ServerLink(
        Endpoint("127.0.0.1", lab.broker.port, lab.server),
        ingest,
        client_id=f"flb-server-{clients}",
    )
    ingest._acker = link.acknowledge
    ingest.start()
    link.start()
    link.wait_connected(10)
    parts = dirichlet_parts(data.y_train, clients, 0.5, 3)
    devices: list[tuple[DeviceLink, LearningWorker]] = []
    tmp = Path(tempfile.mkdtemp())
    for device_id, part in zip(ids, parts, strict=True):
        rows, labels = data.x_train[part], data.y_train[part]
        holder: list[DeviceLink] = []
        worker = LearningWorker(
            lambda frame, h=holder: h[0].send_frame(frame),  # type: ignore[misc]
            lambda width, r=rows, y=labels: (r, y),  # type: ignore[misc]
        )
        device = DeviceLink(
            device_id,
            Endpoint("127.0.0.1", lab.broker.port, lab.identity(device_id)),
            Spool(tmp / f"{device_id}.db", max_bytes=10**7, max_age_s=1e6),
            agent_version="bench",
            policy=DrainPolicy(100, 100, 20),
            on_frame=worker.on_frame,
        )
        holder.append(device)
        device.start()
        devices.append((device, worker))
    for device, _ in devices:
        device.wait_connected(30)
    grid = MqttGrid(
        lambda d, f: link.send_raw(d, Channel.FL_IN, f),
        eligible=lambda: ids,
        max_payload=256 * 1024,
    )
    trainable, initial = start_network()
    flower_compat.set_task_identity(2)
    marks = [time.perf_counter()]
    slowest: list[float] = []
    by_id = {d.device_id: w for d, w in devices}

    def hook(round_no: int, weights: dict[str, np.ndarray]) -> dict[str, float]:
        marks.append(time.perf_counter())
        exchange = [e for e in grid.exchanges if e.message_type == "train"][-1]  # type: ignore[union-attr]
        slowest.append(max(by_id[d].last_train_s for d in exchange.participants))
        return {}

    spec = RunSpec(model="digits", rounds=ROUNDS, min_clients=clients, local=LOCAL)
    try:
        run_rounds(
            grid, spec, initial, trainable=trainable, preprocessing=PREPROCESSING, on_round=hook
        )  # type: ignore[arg-type]
    finally:
        for device, worker in devices:
            worker.stop()
            device.stop(1)
        link.stop()
        ingest.stop()
        store.close()
    rounds = [b - a for a, b in itertools.pairwise(marks)]
    over = [r - s for r, s in zip(rounds, slowest, strict=True)]
    return statistics.median(over), statistics.median(rounds), statistics.median(slowest)


_MEMORY_CHILD = r"""
import json, sys, time
from pathlib import Path
from agent.learning.worker import LearningWorker
from agent.samples import SampleStore
from agent.spool import Spool
import agent.link, agent.telemetry, agent.metrics

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

frames = json.loads(Path(sys.argv[1]).read_text())
tmp = Path(sys.argv[2])
samples = SampleStore(tmp / "samples.db", max_samples=5000)
spool = Spool(tmp / "spool.db", max_bytes=10**7, max_age_s=1e6)
samples.dataset(64)
idle = rss()
sent = []
w = LearningWorker(lambda f: sent.append(f) or True, samples.dataset)
for f in frames:
    w.on_frame(bytes.fromhex(f))
while not sent:
    time.sleep(0.01)
after = rss()
print(json.dumps({"idle": idle, "after": after}))
"""


def memory() -> tuple[int, int]:
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

    from edgefleet_contract import flframes
    from fleet_server.federation import wire
    from fleet_server.federation.app import to_record, train_config

    trainable, initial = start_network()
    flower_compat.set_task_identity(3)
    spec = RunSpec(model="digits", local=LOCAL)
    content = RecordDict(
        {
            "arrays": to_record(initial),
            "config": train_config(spec, trainable, PREPROCESSING),  # type: ignore[arg-type]
        }
    )
    assert isinstance(content["arrays"], ArrayRecord) and isinstance(
        content["config"], ConfigRecord
    )
    message = Message(content, 12345, "train")
    flower_compat.assign_message_id(message)
    frames = flframes.split(wire.encode_instruction(message), 256 * 1024)
    tmp = Path(tempfile.mkdtemp())
    store = SampleStore(tmp / "samples.db", max_samples=5000)
    data = split()
    for row, label in zip(data.x_train[:300], data.y_train[:300], strict=True):
        store.add(row, int(label))
    store.close()
    (tmp / "frames.json").write_text(json.dumps([f.hex() for f in frames]))
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    out = (
        subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, str(tmp / "frames.json"), str(tmp)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    result = json.loads(out)
    return int(result["idle"]), int(result["after"])


def run() -> list[dict[str, object]]:
    lab = Lab()
    rows: list[dict[str, object]] = []
    try:
        for clients in (10, 100):
            over, wall, slowest = overhead(lab, clients)
            rows.append(
                {
                    "benchmark": f"round overhead, {clients} clients (median of {ROUNDS})",
                    "value": f"{over:.3f} s",
                    "baseline": f"{wall:.3f} s",
                    "ratio": f"{over / wall:.2f}",
                    "note": f"baseline: whole round; slowest local training {slowest:.3f} s",
                }
            )
    finally:
        lab.close()
    idle, after = memory()
    rows.append(
        {
            "benchmark": "agent RSS after a training round (native wire, no Flower)",
            "value": f"{after / 2**20:.1f} MiB",
            "baseline": f"{idle / 2**20:.1f} MiB",
            "ratio": f"{after / idle:.2f}",
            "note": "baseline: the same agent-like process idle",
        }
    )
    return rows


if __name__ == "__main__":
    print(table(run()))
