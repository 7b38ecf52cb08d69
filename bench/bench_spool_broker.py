"""Store-and-forward through the real broker: a 10-minute outage at one telemetry batch a
second leaves 600 realistic batches in the device's SQLite spool; then the real
``DeviceLink`` connects to mosquitto (mTLS) and drains them oldest-first while new
batches keep arriving (one a second), and a subscriber with the server's identity
checks that every batch id arrived exactly once and in order.

Two drains: the default ``DrainPolicy`` (50/s, burst 100, 20 in flight: what a fleet
coming back online at once should do) and an unthrottled one (what the spool and link
can do).  Baseline in the same run: a bare paho client publishing the same 600 payloads
at QoS 1 (100 in flight) to the same broker, with nothing stored."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.link import DeviceLink
from agent.spool import DrainPolicy, Spool
from edgefleet_common.mqtt import Endpoint, TlsFiles, tls_context
from edgefleet_contract.codec import Codec
from edgefleet_contract.messages import Telemetry
from edgefleet_contract.topics import Channel
from fleet_server.config import SERVER_IDENTITY
from tests.harness import wait_for

from ._lab import Lab
from .bench_spool import OUTAGE_S, batch_maker

TIMEOUT_S = 180.0


class Receiver:
    """The server side: every telemetry batch's ``(device, seq)``, with receive times."""

    def __init__(self, tls: TlsFiles, port: int) -> None:
        self.seen: dict[str, list[tuple[int, float]]] = {}
        self._codec = Codec()
        self._lock = threading.Lock()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{SERVER_IDENTITY}-bench",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.tls_set_context(tls_context(tls))
        self._client.on_message = self._on_message
        ready = threading.Event()
        self._client.on_subscribe = lambda *_: ready.set()
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        self._client.subscribe("devices/+/telemetry", qos=1)
        if not ready.wait(30):
            raise RuntimeError("subscriber did not get SUBACK")

    def _on_message(self, c: object, u: object, msg: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        batch = self._codec.decode_as(Telemetry, bytes(msg.payload), topic=msg.topic)
        if not isinstance(batch, Telemetry):
            raise RuntimeError(f"undecodable batch: {batch}")
        with self._lock:
            self.seen.setdefault(batch.device_id, []).append((batch.seq, now))

    def count(self, device: str) -> int:
        with self._lock:
            return len(self.seen.get(device, []))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def verdict(seqs: list[int], expected: int) -> str:
    ok = seqs == list(range(1, expected + 1))
    dupes = len(seqs) - len(set(seqs))
    if ok:
        return f"{expected}/{expected} batch ids, exactly once, in order"
    return f"FAILED: {len(set(seqs))}/{expected} distinct, {dupes} duplicates"


@dataclass(frozen=True)
class Drain:
    bytes_queued: int
    rate: float
    elapsed: float
    verdict: str
    live: int


def drain(lab: Lab, receiver: Receiver, device: str, policy: DrainPolicy) -> Drain:
    root = lab.dir / device
    make = batch_maker(root)  # batches are built for bench-1, then re-tagged for this device
    codec = Codec()
    spool = Spool(root / "spool.db", max_bytes=64 << 20, max_age_s=7 * 86400)
    topic = f"devices/{device}/telemetry"

    def batch(seq: int) -> bytes:
        decoded = codec.decode_as(Telemetry, make(), topic="devices/bench-1/telemetry")
        assert isinstance(decoded, Telemetry)
        return codec.encode(
            decoded.model_copy(update={"device_id": device, "seq": seq, "batch_id": f"b-{seq}"})
        )

    for seq in range(1, OUTAGE_S + 1):  # the outage: the link is down, batches queue
        spool.push(topic, batch(seq))
    queued = spool.stats()
    link = DeviceLink(
        device,
        Endpoint("127.0.0.1", lab.broker.port, lab.identity(device)),
        spool,
        agent_version="bench",
        policy=policy,
    )
    start = time.perf_counter()
    link.start()
    wait_for(link.connected.is_set, TIMEOUT_S, "the link to connect", interval=0.01)
    connected = time.perf_counter()
    seq, next_new = OUTAGE_S, connected + 1.0
    while receiver.count(device) < OUTAGE_S:
        if time.perf_counter() >= next_new:  # live data keeps arriving during the drain
            seq += 1
            link.send(Channel.TELEMETRY, batch(seq))
            next_new += 1.0
        time.sleep(0.005)
        if time.perf_counter() - start > TIMEOUT_S:
            raise RuntimeError("drain did not finish")
    backlog_done = max(t for s, t in receiver.seen[device] if s <= OUTAGE_S)
    wait_for(
        lambda: spool.stats().depth == 0 and receiver.count(device) >= seq,
        TIMEOUT_S,
        "the live batches",
        interval=0.01,
    )
    link.stop()
    spool.close()
    seqs = [s for s, _ in receiver.seen[device]]
    elapsed = backlog_done - connected
    return Drain(queued.bytes, OUTAGE_S / elapsed, elapsed, verdict(seqs, seq), seq - OUTAGE_S)


def bare(lab: Lab, receiver: Receiver, device: str) -> float:
    """Batches/s of a bare paho client sending the same payloads (QoS 1, 100 in flight)."""
    make = batch_maker(lab.dir / device)
    payloads = [make() for _ in range(OUTAGE_S)]
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=device, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.tls_set_context(tls_context(lab.identity(device)))
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", lab.broker.port)
    client.loop_start()
    try:
        start = time.perf_counter()
        for payload in payloads:
            client.publish(f"devices/{device}/telemetry", payload, qos=1)
        wait_for(
            lambda: receiver.count("bench-1") >= OUTAGE_S,
            TIMEOUT_S,
            "the bare publisher's batches",
            interval=0.01,
        )
        last = max(t for _, t in receiver.seen["bench-1"])
        return OUTAGE_S / (last - start)
    finally:
        client.disconnect()
        client.loop_stop()


def run() -> list[dict[str, object]]:
    lab = Lab()
    receiver = Receiver(lab.server, lab.broker.port)
    try:
        baseline = bare(lab, receiver, "bench-1")
        paced = drain(lab, receiver, "drain-paced", DrainPolicy(50.0, 100, 20))
        fast = drain(lab, receiver, "drain-fast", DrainPolicy(1e6, 10**6, 100))
    finally:
        receiver.close()
        lab.close()
    rows: list[dict[str, object]] = [
        {
            "benchmark": f"bare paho, {OUTAGE_S} batches, QoS 1 (baseline)",
            "batches/s": f"{baseline:,.0f}",
            "ratio": "1.00",
            "note": f"{paced.bytes_queued / OUTAGE_S:,.0f} B/batch; nothing stored",
        }
    ]
    for name, result in (
        ("spool drain, DrainPolicy(50/s, burst 100, 20 in flight)", paced),
        ("spool drain, unthrottled (100 in flight)", fast),
    ):
        rows.append(
            {
                "benchmark": name,
                "batches/s": f"{result.rate:,.1f}",
                "ratio": f"{result.rate / baseline:.3f}",
                "note": f"backlog of {OUTAGE_S} sent in {result.elapsed:.1f} s while "
                f"{result.live} live batches arrived; {result.verdict}; spool empty",
            }
        )
    return rows
