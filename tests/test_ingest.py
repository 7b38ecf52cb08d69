"""Ingest over the real broker into a real store: bad input is counted, never stored."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet_contract.codec import Codec
from edgefleet_contract.messages import Telemetry
from edgefleet_contract.mqtt import Endpoint, TlsFiles
from fleet_server.broker import ManagedBroker
from fleet_server.ingest import Ingest
from fleet_server.link import ServerLink
from fleet_server.metrics import Registry
from fleet_server.store import open_store

from .harness import Client, Pki, wait_for, watch_subacks


def telemetry(device: str, n: int) -> bytes:
    return Codec().encode(
        Telemetry(device_id=device, batch_id=f"b-{n}", seq=n, ts=time.time(), window_s=1)
    )


def test_ingest_counts_rejects_and_keeps_going(
    broker: ManagedBroker,
    pki: Pki,
    identity: Callable[..., TlsFiles],
    mqtt_client: Callable[..., Client],
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "fleet.db")
    for d in ("ing-1", "ing-2"):
        store.create_device(d, name=d, tags={}, now=0)
    registry = Registry()
    ingest = Ingest(store, registry=registry, batch_size=50)
    link = ServerLink(
        Endpoint("127.0.0.1", broker.port, pki.server), ingest, client_id="fleet.server.ingest-test"
    )
    ingest._acker = link.acknowledge
    subscribed = watch_subacks(link)
    ingest.start()
    link.start()
    try:
        assert link.wait_connected(10)
        assert subscribed.wait(10), "the server's subscriptions were not granted"
        dev = mqtt_client(identity("ing-1"), "ing-1")
        dev.connect(broker.port)
        topic = "devices/ing-1/telemetry"
        good = json.loads(telemetry("ing-1", 1))
        payloads = [
            telemetry("ing-1", 1),
            telemetry("ing-1", 1),  # a redelivery: stored once
            json.dumps({**good, "device_id": "ing-2", "batch_id": "forged"}).encode(),
            b"{not json",
            json.dumps({**good, "v": 99, "batch_id": "future"}).encode(),
            b"{" + b" " * 300_000 + b"}",
            json.dumps({**good, "seq": -5, "batch_id": "neg"}).encode(),
            telemetry("ing-1", 2),
        ]
        for p in payloads:
            dev.client.publish(topic, p, qos=1)
        wait_for(lambda: len(store.query_raw("ing-1", since=0, until=1e11)) == 2, what="2 stored")
        wait_for(
            lambda: registry.render().count("edgefleet_ingest_rejected_total{") >= 4,
            what="reject metrics",
        )
        assert [t.batch_id for t in store.query_raw("ing-1", since=0, until=1e11)] == ["b-1", "b-2"]
        assert store.query_raw("ing-2", since=0, until=1e11) == []
        text = registry.render()
        for reason in ("device_mismatch", "not_json", "unknown_version", "too_large", "invalid"):
            assert f'edgefleet_ingest_rejected_total{{reason="{reason}"}} 1' in text, text
        wait_for(
            lambda: "edgefleet_ingest_duplicates_total 1" in registry.render(),
            what="duplicate counted",
        )
    finally:
        link.stop()
        ingest.stop()
        store.close()
