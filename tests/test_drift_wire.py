"""Drift on the wire: the PSI older agents send still reads, and both kinds land in the
store and the overview the way each means."""

from __future__ import annotations

import json
import time

import numpy as np

from agent.drift_monitor import AlertPolicy, DriftMonitor
from edgefleet_contract.codec import Accepted, Codec
from edgefleet_contract.drift import build_reference
from edgefleet_contract.messages import DriftReport, DriftStats, InferenceStats, Telemetry
from fleet_server.store import open_store

NOW = time.time()

# A batch exactly as an agent before the chi-squared statistics published it.
OLD_AGENT_BATCH = {
    "v": 1,
    "device_id": "old-agent",
    "batch_id": "a1b2c3d4e5f60718-7",
    "seq": 7,
    "ts": NOW - 60,
    "window_s": 10.0,
    "inference": {
        "model": "digits",
        "version": "1.0.0",
        "count": 250,
        "errors": 0,
        "throughput_per_s": 25.0,
        "confidence_hist": [0, 0, 0, 0, 0, 0, 0, 10, 40, 200],
        "class_counts": {"3": 250},
    },
    "drift": {
        "method": "psi",
        "samples": 250,
        "score": 0.61,
        "features": [{"feature": 12, "psi": 0.61}, {"feature": 3, "psi": 0.2}],
    },
    "link": {},
    "spool": {},
    "readings": [],
}


def test_an_old_agents_psi_payload_still_decodes() -> None:
    codec = Codec()
    for payload in (OLD_AGENT_BATCH, {**OLD_AGENT_BATCH, "drift": _without_method()}):
        got = codec.decode("devices/old-agent/telemetry", json.dumps(payload).encode())
        assert isinstance(got, Accepted), got
        assert isinstance(got.message, Telemetry)
        drift = got.message.drift
        assert isinstance(drift, DriftStats) and drift.score == 0.61
        assert drift.features[0].feature == 12


def _without_method() -> dict[str, object]:
    drift: dict[str, object] = {**OLD_AGENT_BATCH["drift"]}  # type: ignore[dict-item]
    drift.pop("method")
    return drift


def _new_batch(device_id: str, *, alert: bool, ts: float) -> Telemetry:
    rng = np.random.default_rng(0)
    reference = build_reference(rng.normal(size=(500, 3)))
    monitor = DriftMonitor(reference, policy=AlertPolicy(burn_in_rows=200))
    monitor.window(rng.normal(size=(200, 3)))
    report = monitor.window(rng.normal(size=(200, 3)))
    report = report.model_copy(update={"alert": alert})
    return Telemetry(
        device_id=device_id,
        batch_id=f"b-{device_id}-{int(ts)}",
        seq=1,
        ts=ts,
        window_s=10.0,
        inference=InferenceStats(
            model="digits", version="1.0.0", count=200, errors=0, throughput_per_s=20.0
        ),
        drift=report,
    )


def test_a_current_report_round_trips_with_its_histograms() -> None:
    batch = _new_batch("cur", alert=True, ts=NOW)
    codec = Codec()
    got = codec.decode("devices/cur/telemetry", codec.encode(batch))
    assert isinstance(got, Accepted) and isinstance(got.message, Telemetry)
    drift = got.message.drift
    assert isinstance(drift, DriftReport) and drift == batch.drift
    assert drift.baseline is not None and len(drift.histograms) == 3


def test_store_and_overview_read_both_kinds(store_url: str) -> None:
    store = open_store(store_url)
    for device_id in ("old-agent", "changed", "normal", "recovered"):
        store.create_device(device_id, name=device_id, tags={}, now=NOW - 3600)
    old = Telemetry.model_validate(OLD_AGENT_BATCH)
    store.insert_telemetry(
        [
            old,
            _new_batch("changed", alert=True, ts=NOW - 30),
            _new_batch("normal", alert=False, ts=NOW - 30),
            _new_batch("recovered", alert=True, ts=NOW - 120),
            _new_batch("recovered", alert=False, ts=NOW - 20),
        ],
        received_at=NOW,
    )
    # A replayed older window does not undo the newer state.
    store.insert_telemetry([_new_batch("changed", alert=False, ts=NOW - 300)], received_at=NOW)
    rollups = store.query_rollups(["old-agent"], since=0, until=1e11)
    assert rollups[0].drift_max == 0.61  # the PSI score, as before
    summary = store.fleet_summary(now=NOW, window_s=900, drift_threshold=0.25, silent_s=300)
    items = summary.alerts["drift"].items
    assert [(a.device_id, a.detail) for a in items] == [
        ("changed", "changed from its baseline"),
        ("recovered", "was changed, back to its baseline"),
        ("old-agent", "PSI over the line"),
    ]
    later = store.fleet_summary(now=NOW + 3600, window_s=900, drift_threshold=0.25, silent_s=300)
    assert [a.device_id for a in later.alerts["drift"].items] == ["changed"]  # still alerting
