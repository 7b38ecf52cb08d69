"""Ingest over the real broker into a real store: bad input is counted, never stored."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from edgefleet_common.mqtt import Endpoint, TlsFiles
from edgefleet_contract.codec import Codec
from edgefleet_contract.messages import Telemetry
from fleet_server.broker import ManagedBroker
from fleet_server.ingest import Ingest
from fleet_server.link import ServerLink
from fleet_server.metrics import Metrics
from fleet_server.store import open_store

from .harness import Client, Pki, wait_for, watch_subacks
from .pgserver import PgServer


def telemetry(device: str, n: int) -> bytes:
    return Codec().encode(
        Telemetry(device_id=device, batch_id=f"b-{n}", seq=n, ts=time.time(), window_s=1)
    )


def test_ingest_counts_rejects_and_keeps_going(
    broker: ManagedBroker,
    pki: Pki,
    identity: Callable[..., TlsFiles],
    mqtt_client: Callable[..., Client],
    store_url: str,
) -> None:
    store = open_store(store_url)
    for d in ("ing-1", "ing-2"):
        store.create_device(d, name=d, tags={}, now=0)
    registry = Metrics()
    ingest = Ingest(store, metrics=registry, batch_size=50)
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


def test_postgres_restarted_under_ingest_loses_nothing(
    broker: ManagedBroker,
    pki: Pki,
    identity: Callable[..., TlsFiles],
    mqtt_client: Callable[..., Client],
) -> None:
    """PostgreSQL goes away mid-stream: ingest keeps retrying the batch it holds without
    acknowledging it, reconnects when the server is back, and every batch is stored once."""
    pg = PgServer().start()  # its own cluster: this test stops it
    try:
        pg.create_database("fleet")
        store = open_store(pg.dsn("fleet"))
        store.create_device("pgr-1", name="pgr-1", tags={}, now=0)
        metrics = Metrics()
        ingest = Ingest(store, metrics=metrics, batch_size=20)
        link = ServerLink(
            Endpoint("127.0.0.1", broker.port, pki.server), ingest, client_id="fleet.server.pgr"
        )
        ingest._acker = link.acknowledge
        ingest.start()
        link.start()
        try:
            assert link.wait_connected(10)
            dev = mqtt_client(identity("pgr-1"), "pgr-1")
            dev.connect(broker.port)

            def stored() -> list[str]:
                return [t.batch_id for t in store.query_raw("pgr-1", since=0, until=1e11)]

            for n in range(20):
                dev.client.publish("devices/pgr-1/telemetry", telemetry("pgr-1", n), qos=1)
            wait_for(lambda: len(stored()) == 20, what="the first 20 stored")
            pg.stop()
            for n in range(20, 40):
                dev.client.publish("devices/pgr-1/telemetry", telemetry("pgr-1", n), qos=1)
            errors = "edgefleet_ingest_write_errors_total"
            wait_for(lambda: ingest.metrics.value(errors) > 0, what="a write failing")
            pg.start()
            wait_for(lambda: len(stored()) == 40, timeout=90, what="all 40 stored after")
            assert sorted(stored()) == sorted(f"b-{n}" for n in range(40))
        finally:
            link.stop()
            ingest.stop()
            store.close()
    finally:
        pg.destroy()
