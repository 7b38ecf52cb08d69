"""Ingest throughput: readings/s stored through the real broker into the real store,
as a ratio to what a bare paho subscriber receives from the same publishers in the
same run (the physical limit of this stack on this machine).  Also checks zero loss.
The publishers are a process of their own, as devices are (:mod:`._publishers`), and
connect before any clock starts.  The bare rate is timed first-to-last message; the
ingest rate from the signal to publish to the last commit, so the ratio errs on the
low side.
One run, one ratio; the goal is 0.6."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edgefleet_common.mqtt import Endpoint, tls_context
from edgefleet_contract.codec import Codec
from edgefleet_contract.messages import Reading, Telemetry
from fleet_server.ingest import Inbound, Ingest
from fleet_server.link import ServerLink
from fleet_server.store import open_store

from ._lab import Lab
from ._publishers import Publishers

DEVICES = 20
BATCHES = 250  # per device
READINGS = 10  # per batch


def payloads(device_id: str) -> list[bytes]:
    codec = Codec()
    now = time.time()
    return [
        codec.encode(
            Telemetry(
                device_id=device_id,
                batch_id=f"{device_id}-{n}",
                seq=n,
                ts=now + n,
                window_s=1,
                readings=[
                    Reading(ts=now + n, name=f"s{k}", value=float(k)) for k in range(READINGS)
                ],
            )
        )
        for n in range(BATCHES)
    ]


def bare_rate(lab: Lab, prepared: dict[str, list[bytes]]) -> tuple[float, int]:
    total = sum(len(v) for v in prepared.values())
    got = 0
    first = last = 0.0
    done = threading.Event()

    def on_message(c: object, u: object, msg: paho.MQTTMessage) -> None:
        nonlocal got, first, last
        now = time.perf_counter()
        if got == 0:
            first = now
        got += 1
        last = now
        if got == total:
            done.set()

    sub = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="bare-sub", protocol=MQTTProtocolVersion.MQTTv5
    )
    sub.tls_set_context(tls_context(lab.server))
    sub.on_message = on_message
    sub.connect("127.0.0.1", lab.broker.port)
    sub.subscribe("devices/+/telemetry", qos=1)
    sub.loop_start()
    time.sleep(0.5)
    with Publishers(prepared, lab.identity, [lab.broker.port]) as pubs:
        pubs.go()
        done.wait(120)
    sub.disconnect()
    sub.loop_stop()
    return got * READINGS / max(last - first, 1e-9), got


class Consumer(Protocol):
    """What carries the broker's telemetry to the ingest (a ServerLink, an AmqpIngest)."""

    connected: threading.Event

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def acknowledge(self, item: Inbound) -> None: ...


def stored_rate(
    prepared: dict[str, list[bytes]],
    consumer_of: Callable[[Ingest], Consumer],
    publishers: Callable[[], Publishers],
    *,
    url: str | None = None,
    connect_s: float = 10,
    timeout_s: float = 120,
) -> tuple[float, int]:
    """Readings/s that ``publishers`` get stored through ``consumer_of(ingest)`` into the
    store at ``url`` (default: a fresh SQLite file), timed from the first publish to
    the last commit; and the batches stored."""
    store = open_store(url or Path(tempfile.mkdtemp()) / "fleet.db")
    for device_id in prepared:
        store.create_device(device_id, name=device_id, tags={}, now=0)
    total = sum(len(v) for v in prepared.values())
    ingest = Ingest(store, batch_size=500)
    consumer = consumer_of(ingest)
    ingest._acker = consumer.acknowledge
    ingest.start()
    consumer.start()
    consumer.connected.wait(connect_s)
    with publishers() as pubs:
        start = time.perf_counter()
        pubs.go()
        stored = 0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stored = int(ingest.metrics.value("edgefleet_ingest_telemetry_batches_total"))
            if stored >= total:
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
    consumer.stop()
    ingest.stop()
    store.close()
    return stored * READINGS / elapsed, stored


def ingest_rate(
    lab: Lab, prepared: dict[str, list[bytes]], url: str | None = None
) -> tuple[float, int]:
    """Readings/s stored into the store at ``url`` (default: a fresh SQLite file)."""

    def link(ingest: Ingest) -> Consumer:
        endpoint = Endpoint("127.0.0.1", lab.broker.port, lab.server)
        return ServerLink(endpoint, ingest, client_id="bench-server")

    return stored_rate(
        prepared, link, lambda: Publishers(prepared, lab.identity, [lab.broker.port]), url=url
    )


def fleet_payloads() -> dict[str, list[bytes]]:
    """Every bench device's encoded batches, by device id (bench-000 ...)."""
    return {f"bench-{i:03d}": payloads(f"bench-{i:03d}") for i in range(DEVICES)}


def fresh(prepared: dict[str, list[bytes]], tag: str) -> dict[str, list[bytes]]:
    """The same batches under new batch ids (``tag`` prefixed), so a second run of the same
    payloads is not deduplicated against the first."""
    return {
        d: [p.replace(b'"batch_id":"', b'"batch_id":"' + tag.encode() + b"-") for p in ps]
        for d, ps in prepared.items()
    }


def run() -> list[dict[str, object]]:
    lab = Lab()
    try:
        prepared = fleet_payloads()
        sent = sum(len(v) for v in prepared.values())
        bare, bare_got = bare_rate(lab, prepared)
        stored_rate, stored = ingest_rate(lab, fresh(prepared, "r2"))
    finally:
        lab.close()
    return [
        {
            "benchmark": "ingest readings/s (bare paho subscriber)",
            "value": f"{bare:,.0f}",
            "baseline": "-",
            "ratio": "1.00",
            "note": f"{bare_got}/{sent} batches received",
        },
        {
            "benchmark": "ingest readings/s (broker -> ingest -> SQLite)",
            "value": f"{stored_rate:,.0f}",
            "baseline": f"{bare:,.0f}",
            "ratio": f"{stored_rate / bare:.2f}",
            "note": f"{stored}/{sent} batches stored, QoS 1, "
            f"{DEVICES} devices x {READINGS} readings",
        },
    ]
