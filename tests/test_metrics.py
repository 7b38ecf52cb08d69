"""/metrics is Prometheus' text format from prometheus_client: counters are counters."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet_server.metrics import Metrics
from fleet_server.server import FleetServer


def test_counters_gauges_and_read_on_scrape_counts() -> None:
    metrics = Metrics()
    received = metrics.counter("edgefleet_demo_received_total", "Messages", ("reason",))
    kept = {"a": 2}
    metrics.counted(
        "edgefleet_demo_kept_total", "Kept elsewhere", ("reason",),
        fn=lambda: [((k,), float(v)) for k, v in kept.items()],
    )  # fmt: skip
    metrics.gauge("edgefleet_demo_depth", "Depth", fn=lambda: [((), 3.0)])
    received.labels("quota").inc(16)
    kept["a"] = 5
    families = {f.name: f for f in text_string_to_metric_families(metrics.render())}
    # The parser names a counter family without its _total suffix.
    assert families["edgefleet_demo_received"].type == "counter"
    assert families["edgefleet_demo_kept"].type == "counter"
    assert families["edgefleet_demo_depth"].type == "gauge"
    assert 'edgefleet_demo_kept_total{reason="a"} 5' in metrics.render()
    assert metrics.value("edgefleet_demo_received_total", reason="quota") == 16
    assert metrics.value("edgefleet_demo_received_total", reason="other") == 0
    with pytest.raises(ValueError):
        metrics.gauge("edgefleet_demo_depth", "Again", fn=lambda: [])


def test_every_total_the_server_exports_is_a_counter(fleet: FleetServer) -> None:
    text = httpx.get(f"{fleet.settings.api_url}/metrics").text
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    # A counter family is named without its _total suffix; a gauge keeps its whole name.
    counters = {
        "edgefleet_ingest_received", "edgefleet_ingest_rejected", "edgefleet_broker_restarts",
        "edgefleet_rollout_errors", "edgefleet_fl_rejected_updates", "edgefleet_fl_dropped_frames",
    }  # fmt: skip
    assert {name: types.get(name) for name in counters} == dict.fromkeys(counters, "counter")
    assert [n for n, t in types.items() if t != "counter" and n.endswith("_total")] == []
    assert types["edgefleet_ingest_queue_depth"] == types["edgefleet_devices_online"] == "gauge"
