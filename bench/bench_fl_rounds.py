"""Federated round overhead through the real broker, and agent memory during a round.

Overhead: N devices, each with the agent's real MQTT link (mTLS, own ACL'd
topics) and learning worker, in one process; the server side is the real
``ServerLink`` -> ingest -> ``MqttGrid`` path running the run spec's default
strategy (Flower's FedAdam). The benchmark's own wrappers (around the grid's
send callback, the devices' send and receive callbacks, the worker's training
call, the ingest frame hook and the strategy) take a ``time.perf_counter``
stamp at every hand-over of a round; nothing is timed inside the product. The
overhead of a round is the sum of those measured parts on the path of the reply
that arrived last: the server building the instructions (strategy +
eligibility), publishing the ones queued before that device's, instruction send
-> device has it, the device's decode and encode (its time between receiving
and replying, less its training), result send -> server has it decoded and
checked (through ingest's batching), and Flower's aggregation. It is not "round
minus training": the training is reported on its own row as wall time and as
the learning thread's CPU time (``time.thread_time``); the two differ by the
time the thread waited for a core or for the GIL (every device here is a thread
of the benchmark's one process, so at 100 devices most of a device's training
wall time is waiting). Round = the strategy's ``configure_train`` call until
the round hook. Goal: <= 0.5 s at 10 clients. The machine is a shared, loaded
2-core box (load average about 10 during the run) and all N devices and the
server compete for the same cores and one GIL, so every wall-clock figure here,
transport included, contains such waiting and is noisy from run to run.

Memory: an agent-like process (link, spool, samples, worker) at idle, then
after it handled one training instruction (edgefleet's native envelope: the
device does not import Flower for a plain round).  Baseline: the same process
idle."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from agent.learning.native import DataSource
from agent.learning.worker import LearningWorker
from agent.link import DeviceLink
from agent.samples import SampleStore
from agent.spool import DrainPolicy, Spool
from edgefleet_common import flower_compat
from edgefleet_common.mqtt import Endpoint
from edgefleet_contract import flwire
from edgefleet_contract.topics import Channel
from fleet_server.federation.grid import MqttGrid
from fleet_server.federation.spec import LocalTraining, RunSpec
from fleet_server.federation.strategies import Wrapped, make_strategy
from fleet_server.ingest import Ingest
from fleet_server.link import ServerLink
from fleet_server.modelkit.digits import PREPROCESSING, split
from fleet_server.modelkit.partition import dirichlet_parts
from fleet_server.store import open_store

from ._lab import Lab
from .bench_federated import digits_rounds, start_network

ROUNDS = 5
LOCAL = LocalTraining(epochs=1, lr=0.1, batch_size=16)


@dataclass
class Marks:
    """One device's ``perf_counter`` stamps in one round (0.0: not seen yet)."""

    sent: float = 0.0
    """The server handed the first frame of this device's instruction to its MQTT session."""
    received: float = 0.0
    """The device's link delivered the instruction's last frame to the worker."""
    replied: float = 0.0
    """The device handed the first frame of its result to its MQTT session."""
    delivered: float = 0.0
    """The server's grid had the whole result, decoded and checked."""
    train_wall: float = 0.0
    train_cpu: float = 0.0


@dataclass
class Parts:
    """One round split into the parts measured on the path of its last reply (seconds)."""

    round_s: float
    configure: float
    publish: float
    downlink: float
    device_codec: float
    uplink: float
    aggregate: float
    train_wall: float
    """The last reply's device: its training, wall clock."""
    train_cpu: float
    slowest_wall: float
    slowest_cpu: float
    """The longest training wall time and the largest training CPU time of the round's
    participants (not necessarily the last reply's device, nor one device)."""
    downlinks: list[float]
    uplinks: list[float]

    @property
    def overhead(self) -> float:
        return (
            self.configure
            + self.publish
            + self.downlink
            + self.device_codec
            + self.uplink
            + self.aggregate
        )

    @property
    def rest(self) -> float:
        """What neither the overhead nor the last device's training covers: the round
        loop waking up for the last reply, bookkeeping after aggregation, the hook."""
        return self.round_s - self.overhead - self.train_wall


@dataclass
class Clock:
    """The stamps of the round under way, and each finished round's parts."""

    marks: dict[str, Marks] = field(default_factory=dict)
    started: float = 0.0
    configured: float = 0.0
    aggregate_s: float = 0.0
    rounds: list[Parts] = field(default_factory=list)

    def of(self, device_id: str) -> Marks:
        return self.marks.setdefault(device_id, Marks())

    def begin(self) -> None:
        self.marks = {}
        self.started = time.perf_counter()

    def close(self, participants: Iterable[str]) -> None:
        """The round hook ran: book the round's parts from the stamps."""
        ended = time.perf_counter()
        seen = [self.marks[d] for d in participants]
        last = max(seen, key=lambda m: m.delivered)
        slowest = max(seen, key=lambda m: m.train_wall)
        self.rounds.append(
            Parts(
                round_s=ended - self.started,
                configure=self.configured - self.started,
                publish=last.sent - self.configured,
                downlink=last.received - last.sent,
                device_codec=last.replied - last.received - last.train_wall,
                uplink=last.delivered - last.replied,
                aggregate=self.aggregate_s,
                train_wall=last.train_wall,
                train_cpu=last.train_cpu,
                slowest_wall=slowest.train_wall,
                slowest_cpu=max(m.train_cpu for m in seen),
                downlinks=[m.received - m.sent for m in seen],
                uplinks=[m.delivered - m.replied for m in seen],
            )
        )


class TimedStrategy(Wrapped):
    """The run's strategy as the server builds it, with the server's two steps of a round timed."""

    def __init__(self, spec: RunSpec, clock: Clock) -> None:
        super().__init__(make_strategy(spec))
        self.clock = clock

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.clock.begin()
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.clock.configured = time.perf_counter()
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        started = time.perf_counter()
        out = super().aggregate_train(server_round, replies)
        self.clock.aggregate_s = time.perf_counter() - started
        return out


class TimedWorker(LearningWorker):
    """The agent's learning worker, stamped where the instruction arrives, trains and leaves."""

    def __init__(self, device_id: str, clock: Clock, data: DataSource) -> None:
        super().__init__(self._send_timed, data)
        self.device_id, self.clock = device_id, clock
        self.link: DeviceLink | None = None

    def _send_timed(self, frame: bytes) -> bool:
        marks = self.clock.of(self.device_id)
        if not marks.replied:
            marks.replied = time.perf_counter()
        assert self.link is not None
        return self.link.send_frame(frame)

    def on_frame(self, frame: bytes) -> None:
        super().on_frame(frame)
        self.clock.of(self.device_id).received = time.perf_counter()

    def answer_native(
        self, instruction: flwire.FlEnvelope, arrays: flwire.Arrays
    ) -> tuple[flwire.FlEnvelope, flwire.Arrays]:
        wall, cpu = time.perf_counter(), time.thread_time()
        out = super().answer_native(instruction, arrays)
        marks = self.clock.of(self.device_id)
        marks.train_wall = time.perf_counter() - wall
        marks.train_cpu = time.thread_time() - cpu
        return out


def _server(lab: Lab, clients: int, clock: Clock) -> tuple[ServerLink, Ingest, list[MqttGrid]]:
    """The server's link and ingest; the grid (once made) gets every fl/out frame, stamped."""
    store = open_store(Path(tempfile.mkdtemp()) / "fleet.db")
    holder: list[MqttGrid] = []

    def deliver(device_id: str, frame: bytes) -> None:
        if holder:
            holder[0].deliver(device_id, frame)
            clock.of(device_id).delivered = time.perf_counter()

    ingest = Ingest(store, batch_size=1000, on_frame=deliver)
    link = ServerLink(
        Endpoint("127.0.0.1", lab.broker.port, lab.server),
        ingest,
        client_id=f"flb-server-{clients}",
    )
    ingest._acker = link.acknowledge
    ingest.start()
    link.start()
    link.wait_connected(10)
    return link, ingest, holder


def _devices(lab: Lab, ids: list[str], clock: Clock) -> list[TimedWorker]:
    """One real device link and learning worker per id, each with its Dirichlet share."""
    data = split()
    parts = dirichlet_parts(data.y_train, len(ids), 0.5, 3, min_size=1)
    tmp = Path(tempfile.mkdtemp())
    workers: list[TimedWorker] = []
    for device_id, part in zip(ids, parts, strict=True):
        rows, labels = data.x_train[part], data.y_train[part]
        worker = TimedWorker(device_id, clock, lambda width, r=rows, y=labels: (r, y))  # type: ignore[misc]
        worker.link = DeviceLink(
            device_id,
            Endpoint("127.0.0.1", lab.broker.port, lab.identity(device_id)),
            Spool(tmp / f"{device_id}.db", max_bytes=10**7, max_age_s=1e6),
            agent_version="bench",
            policy=DrainPolicy(100, 100, 20),
            on_frame=worker.on_frame,
        )
        worker.link.start()
        workers.append(worker)
    for worker in workers:
        assert worker.link is not None
        worker.link.wait_connected(30)
    return workers


def overhead(lab: Lab, clients: int) -> list[Parts]:
    """Each round's measured parts over ROUNDS rounds with ``clients`` devices."""
    clock = Clock()
    ids = [f"flb{clients}-{i:03d}" for i in range(clients)]
    link, ingest, holder = _server(lab, clients, clock)
    for device_id in ids:
        ingest.store.create_device(device_id, name=device_id, tags={}, now=time.time())
    workers = _devices(lab, ids, clock)

    def send(device_id: str, frame: bytes) -> None:
        marks = clock.of(device_id)
        if not marks.sent:
            marks.sent = time.perf_counter()
        link.send_raw(device_id, Channel.FL_IN, frame)

    grid = MqttGrid(send, eligible=lambda: ids, max_payload=256 * 1024)
    holder.append(grid)
    start = start_network()
    flower_compat.set_task_identity(2)

    def hook(round_no: int, weights: dict[str, np.ndarray]) -> dict[str, float]:
        exchange = [e for e in grid.exchanges if e.message_type == "train"][-1]
        clock.close(exchange.participants)
        return {}

    spec = RunSpec(model="digits", rounds=ROUNDS, min_clients=clients, local=LOCAL)
    try:
        digits_rounds(grid, spec, start, hook, TimedStrategy(spec, clock))
    finally:
        for worker in workers:
            worker.stop()
            assert worker.link is not None
            worker.link.stop(1)
        link.stop()
        ingest.stop()
        ingest.store.close()
    return clock.rounds


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
            "config": train_config(spec, trainable, PREPROCESSING),
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


def _med(rounds: list[Parts], pick: str) -> float:
    return statistics.median(float(getattr(r, pick)) for r in rounds)


def _rows(clients: int, rounds: list[Parts]) -> list[dict[str, object]]:
    """Two rows per fleet size: the measured overhead, and the training's wall vs CPU time."""
    over, wall = _med(rounds, "overhead"), _med(rounds, "round_s")
    down = statistics.median(x for r in rounds for x in r.downlinks)
    up = statistics.median(x for r in rounds for x in r.uplinks)
    parts = ", ".join(
        f"{label} {_med(rounds, name):.3f}"
        for label, name in (
            ("configure", "configure"),
            ("publish queue", "publish"),
            ("instruction send→receive", "downlink"),
            ("device decode/encode", "device_codec"),
            ("result send→receive", "uplink"),
            ("aggregation", "aggregate"),
        )
    )
    rest = _med(rounds, "rest")
    train_wall, train_cpu = _med(rounds, "slowest_wall"), _med(rounds, "slowest_cpu")
    return [
        {
            "benchmark": f"round overhead, {clients} clients (median of {ROUNDS} rounds)",
            "value": f"{over:.3f} s",
            "baseline": f"{wall:.3f} s",
            "ratio": f"{over / wall:.2f}",
            "note": (
                "value: median over the rounds of the sum of the parts measured on the "
                f"last reply's path; each part's median, s: {parts}; "
                f"baseline: whole round; median device: instruction {down:.3f} s, "
                f"result {up:.3f} s; not in either: the last device's training "
                f"(wall) and {rest:.3f} s of the rest of the round"
            ),
        },
        {
            "benchmark": f"local training, {clients} clients, slowest device: wall vs CPU",
            "value": f"{train_wall:.3f} s wall",
            "baseline": f"{train_cpu:.3f} s CPU",
            "ratio": f"{train_wall / train_cpu:.2f}",
            "note": (
                "value: perf_counter around the worker's training; baseline: the learning "
                "thread's time.thread_time (wall - CPU = waiting for a core or the GIL); "
                f"last reply's device: {_med(rounds, 'train_wall'):.3f} s wall, "
                f"{_med(rounds, 'train_cpu'):.3f} s CPU"
            ),
        },
    ]


def run() -> list[dict[str, object]]:
    lab = Lab()
    rows: list[dict[str, object]] = []
    try:
        for clients in (10, 100):
            rows += _rows(clients, overhead(lab, clients))
    finally:
        lab.close()
    idle, after = memory()
    rows.append(
        {
            "benchmark": "agent RSS after a training round (native wire, no Flower)",
            "value": f"{after / 2**20:.1f} MiB",
            "baseline": f"{idle / 2**20:.1f} MiB",
            "ratio": f"{after / idle:.2f}",
            "note": (
                "baseline: the same agent-like process idle (before the native wire "
                "it was 86.0 MiB with Flower imported)"
            ),
        }
    )
    return rows
