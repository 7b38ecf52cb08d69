"""Cohort views: drift windows merged per tag value on a real store, worst slice found."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from agent.drift_monitor import AlertPolicy, DriftMonitor
from edgefleet_contract.drift import build_reference
from edgefleet_contract.messages import InferenceStats, LatencySummary, Telemetry
from fleet_server.api import ApiContext, create_app
from fleet_server.auth import hash_password
from fleet_server.config import ApiSettings, ServerSettings
from fleet_server.enrollment import Enrollment
from fleet_server.pki import FleetCA
from fleet_server.store import open_store

NOW = time.time()


def _batches(device_id: str, *, shifted: bool, right: int, seed: int) -> list[Telemetry]:
    """Three windows of one device after its burn-in; a shifted site sees other inputs."""
    rng = np.random.default_rng(seed)
    reference = build_reference(np.random.default_rng(0).normal(size=(2000, 4)))
    monitor = DriftMonitor(reference, policy=AlertPolicy(burn_in_rows=200))
    out = []
    for n in range(4):
        rows = rng.normal(size=(200, 4))
        if shifted:
            rows[:, 1] += 1.0
        report = monitor.window(rows)
        if n == 0:
            continue
        inference = InferenceStats(
            model="digits",
            version="1.0.0",
            count=200,
            errors=0,
            throughput_per_s=20.0,
            latency=LatencySummary(p50_ms=1, p95_ms=2, p99_ms=3, max_ms=4, mean_ms=1),
            feedback_count=20,
            feedback_correct=right,
        )
        out.append(
            Telemetry(
                device_id=device_id,
                batch_id=f"{device_id}-{n}",
                seq=n,
                ts=NOW - 300 + n,
                window_s=10,
                inference=inference,
                drift=report,
            )
        )
    return out


def test_the_shifted_site_is_the_worst_slice(tmp_path: Path, store_url: str) -> None:
    store = open_store(store_url)
    plan = {"berlin": (False, 19), "lyon": (False, 18), "porto": (True, 9)}
    batches = []
    for i, (site, (shifted, right)) in enumerate(plan.items()):
        for k in range(2):
            device_id = f"{site}-{k}"
            store.create_device(device_id, name=device_id, tags={"site": site}, now=NOW - 3600)
            batches += _batches(device_id, shifted=shifted, right=right, seed=10 * i + k)
    store.insert_telemetry(batches, received_at=NOW)
    ca = FleetCA.create(tmp_path / "ca", now=NOW)
    store.create_user("vic", role="viewer", password_hash=hash_password("vic-password"), now=NOW)
    ctx = ApiContext(
        settings=ServerSettings(data_dir=tmp_path, api=ApiSettings()),
        store=store,
        enrollment=Enrollment(store, ca, token_ttl_s=600, cert_validity_s=3600),
        clock=lambda: NOW,
    )
    client = TestClient(create_app(ctx))
    token = client.post(
        "/api/v1/auth/login", json={"username": "vic", "password": "vic-password"}
    ).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    r = client.get("/api/v1/console/cohorts", params={"by": "site"}, headers=headers)
    assert r.status_code == 200, r.text
    (view,) = r.json()
    assert (view["model"], view["version"], view["by"]) == ("digits", "1.0.0", "site")
    slices = {s["key"]: s for s in view["slices"]}
    assert set(slices) == set(plan)
    assert all(
        s["devices"] == 2 and s["windows"] == 6 and s["samples"] == 1200 for s in slices.values()
    )
    assert view["worst_drift"] == "porto"
    # Against the rest of the fleet every slice differs a little when one is shifted (the
    # rest holds it); the shifted one differs most.
    assert slices["porto"]["p_value"] < 1e-6
    assert slices["porto"]["effect"] > 1.5 * max(slices[k]["effect"] for k in ("berlin", "lyon"))
    assert view["worst_accuracy"] == "porto"
    assert slices["porto"]["accuracy"] == 9 / 20
    assert slices["porto"]["accuracy_low"] < 0.45 < slices["porto"]["accuracy_high"] < 0.6
    assert slices["berlin"]["p95_ms"] == 2.0
    # Each device normal for itself (its burn-in saw the same inputs): no alerts.
    assert sum(s["alerting"] for s in slices.values()) == 0
    by_device = client.get("/api/v1/console/cohorts", headers=headers).json()[0]
    assert len(by_device["slices"]) == 6 and by_device["worst_drift"].startswith("porto")
    bad = client.get("/api/v1/console/cohorts", params={"by": 'site"x'}, headers=headers)
    assert bad.status_code == 422
