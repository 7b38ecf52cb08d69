"""Hardening: per-device ingest quotas.

Regression tests for the security review of issue 19: each failed before its fix.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fleet_server.config import ServerSettings
from fleet_server.store import open_store

from .hardening_kit import MiB


def test_a_device_over_its_quota_is_refused_counted_and_reported(tmp_path: Path) -> None:
    from edgefleet_contract.codec import Codec
    from edgefleet_contract.messages import Telemetry
    from fleet_server.ingest import Inbound, Ingest
    from fleet_server.metrics import Metrics
    from fleet_server.quota import DeviceQuota, Rate

    store = open_store(tmp_path / "fleet.db")
    for d in ("q-1", "q-2"):
        store.create_device(d, name=d, tags={}, now=0)
    now = [1000.0]
    quota = DeviceQuota(Rate(1.0, 5), Rate(2000.0, 20_000), clock=lambda: now[0])
    registry = Metrics()
    acked: list[Inbound] = []
    ingest = Ingest(store, metrics=registry, quota=quota, acker=acked.append)

    def batch(device: str, n: int, pad: int = 0) -> Inbound:
        msg = Telemetry(
            device_id=device, batch_id=f"{device}-{n}", seq=n, ts=time.time(), window_s=1
        )
        payload = Codec().encode(msg)
        if pad:
            doc = json.loads(payload)
            doc["labels"] = {"pad": "x" * pad}
            payload = json.dumps(doc).encode()
        return Inbound(f"devices/{device}/telemetry", payload, time.time(), mid=n, qos=1)

    flood = [batch("q-1", n) for n in range(20)] + [batch("q-2", n) for n in range(3)]
    ingest.process(flood)
    stored = {d: len(store.query_raw(d, since=0, until=1e11)) for d in ("q-1", "q-2")}
    assert stored == {"q-1": 5, "q-2": 3}  # the noisy device does not spend the other's quota
    assert len(acked) == 23  # refused batches are acknowledged, not redelivered forever
    text = registry.render()
    assert 'edgefleet_ingest_rejected_total{reason="quota"} 15' in text
    # bytes: a batch bigger than what is left in the byte bucket is refused too
    now[0] += 100  # batches refill to the burst of 5; bytes to 20 kB
    ingest.process([batch("q-2", 100, pad=30_000)])
    assert len(store.query_raw("q-2", since=0, until=1e11)) == 3
    assert 'edgefleet_ingest_rejected_total{reason="quota"} 16' in registry.render()


def test_the_server_applies_a_default_quota() -> None:
    from fleet_server.server import telemetry_quota

    quota = telemetry_quota(ServerSettings())
    # above what an agent drains at (50 batches/s) yet far below a flood
    assert 50 < quota.batches.per_s < 1000 and quota.size.burst < 64 * MiB
