"""Cohort views: drift windows merged per tag value on a real store, worst slice found."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from agent.drift_monitor import AlertPolicy, DriftMonitor
from edgefleet_contract.drift import build_reference
from edgefleet_contract.messages import LatencySummary, Telemetry
from edgefleet_contract.multivariate import build_pca
from fleet_server.api import ApiContext, create_app
from fleet_server.auth import hash_password
from fleet_server.config import ApiSettings, ServerSettings
from fleet_server.enrollment import Enrollment
from fleet_server.pki import FleetCA
from fleet_server.store import open_store

from .harness import inference_stats
from .test_drift_multivariate import REFERENCE, correlated

NOW = time.time()


def _batches(
    device_id: str, *, shifted: bool, right: int, seed: int, joint: bool = False
) -> list[Telemetry]:
    """Three windows of one device after its burn-in; a shifted site sees other inputs.
    ``joint``: correlated features and a PCA; the shifted site's correlation is flipped,
    its marginals unchanged."""
    rng = np.random.default_rng(seed)
    if joint:
        reference = build_reference(REFERENCE)
        monitor = DriftMonitor(
            reference, policy=AlertPolicy(burn_in_rows=200), pca=build_pca(REFERENCE)
        )
    else:
        reference = build_reference(np.random.default_rng(0).normal(size=(2000, 4)))
        monitor = DriftMonitor(reference, policy=AlertPolicy(burn_in_rows=200))
    out = []
    for n in range(4):
        if joint:
            rows = correlated(200, rng, flip=shifted)
        else:
            rows = rng.normal(size=(200, 4))
            if shifted:
                rows[:, 1] += 1.0
        report = monitor.window(rows)
        if n == 0:
            continue
        inference = inference_stats(
            count=200,
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


def _fleet(
    tmp_path: Path, store_url: str, plan: dict[str, tuple[bool, int]], *, joint: bool = False
) -> TestClient:
    store = open_store(store_url)
    batches = []
    for i, (site, (shifted, right)) in enumerate(plan.items()):
        for k in range(2):
            device_id = f"{site}-{k}"
            store.create_device(device_id, name=device_id, tags={"site": site}, now=NOW - 3600)
            batches += _batches(
                device_id, shifted=shifted, right=right, seed=10 * i + k, joint=joint
            )
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
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def test_the_shifted_site_is_the_worst_slice(tmp_path: Path, store_url: str) -> None:
    plan = {"berlin": (False, 19), "lyon": (False, 18), "porto": (True, 9)}
    client = _fleet(tmp_path, store_url, plan)
    headers: dict[str, str] = {}
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

    assert slices["porto"]["multivariate_p_value"] is None  # this package has no PCA


def test_a_site_whose_features_move_together_differently_is_found_by_the_joint_test(
    tmp_path: Path, store_url: str
) -> None:
    plan = {"berlin": (False, 19), "lyon": (False, 18), "porto": (True, 18)}
    client = _fleet(tmp_path, store_url, plan, joint=True)
    r = client.get("/api/v1/console/cohorts", params={"by": "site"})
    assert r.status_code == 200, r.text
    (view,) = r.json()
    slices = {s["key"]: s for s in view["slices"]}
    assert view["worst_drift"] == "porto"
    # Every marginal is the same at every site: only the joint (PCA) test tells porto apart.
    assert all(s["p_value"] > 0.01 for s in slices.values())
    assert slices["porto"]["multivariate_p_value"] < 1e-6
    assert slices["berlin"]["multivariate_effect"] < slices["porto"]["multivariate_effect"]
