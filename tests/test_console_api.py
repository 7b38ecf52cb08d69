"""The console's server side on a real store: summary (SQL), chart series, update
history, the session endpoint and the static pages' security headers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgefleet_contract.messages import (
    DriftStats,
    FeatureDrift,
    InferenceStats,
    LatencySummary,
    ModelRef,
    ReportedState,
    SpoolStats,
    Telemetry,
    UpdateReport,
)
from fleet_server.api import ApiContext, create_app
from fleet_server.auth import CSRF_HEADER, SESSION_COOKIE, csrf_for, hash_password
from fleet_server.config import ApiSettings, ServerSettings
from fleet_server.console.series import series_of
from fleet_server.enrollment import Enrollment
from fleet_server.pki import FleetCA
from fleet_server.store import open_store
from fleet_server.store.base import Store

from .harness import inference_stats, nth_batch, system_stats

NOW = time.time()


def confidence_mean(hist: list[int]) -> float | None:
    """One window's mean confidence, as the contract computes it."""
    stats = InferenceStats(
        model="m", version="1", count=0, errors=0, throughput_per_s=0, confidence_hist=hist
    )
    return stats.mean_confidence


@pytest.fixture
def env(tmp_path: Path) -> tuple[TestClient, Store]:
    store = open_store(tmp_path / "fleet.db")
    ca = FleetCA.create(tmp_path / "ca", now=NOW)
    settings = ServerSettings(data_dir=tmp_path, api=ApiSettings())
    for name, role in (("alice", "admin"), ("vic", "viewer")):
        store.create_user(name, role=role, password_hash=hash_password(f"{name}-password"), now=NOW)  # type: ignore[arg-type]
    ctx = ApiContext(
        settings=settings,
        store=store,
        enrollment=Enrollment(store, ca, token_ttl_s=600, cert_validity_s=3600),
        clock=lambda: NOW,  # "silent for 5 min" must not depend on when the test runs
    )
    return TestClient(create_app(ctx)), store


def bearer(client: TestClient, user: str) -> dict[str, str]:
    r = client.post("/api/v1/auth/login", json={"username": user, "password": f"{user}-password"})
    return {"Authorization": f"Bearer {r.json()['token']}"}


def enrolled(store: Store, device_id: str, *, tags: dict[str, str], online: bool) -> None:
    store.create_device(device_id, name=device_id, tags=tags, now=NOW - 7200)
    serial = int.from_bytes(device_id.encode().ljust(8, b"_")[:8], "big")
    store.add_certificate(device_id, serial, NOW + 3600, NOW - 7200)
    store.set_presence(device_id, online=online, ts=NOW - 10 if online else NOW - 3600)


def report(device_id: str, version: str, update: UpdateReport | None = None) -> ReportedState:
    return ReportedState(
        device_id=device_id,
        ts=NOW,
        agent_version="0.1.0",
        model=ModelRef(name="digits", version=version, sha256="0" * 64, runtime="onnx"),
        health="ok",
        update=update,
    )


def batch(device_id: str, n: int, *, drift: float, dropped: int, ts: float) -> Telemetry:
    return nth_batch(
        device_id,
        n,
        ts,
        window_s=1,
        system=system_stats(
            cpu_percent=40,
            mem_total_bytes=4,
            rss_bytes=2**20,
            disk_used_bytes=0,
            disk_total_bytes=1,
        ),
        inference=inference_stats(
            latency=LatencySummary(p50_ms=1, p95_ms=2, p99_ms=3, max_ms=4, mean_ms=1),
            confidence_hist=[0, 0, 0, 10],
        ),
        drift=DriftStats(
            samples=10,
            score=drift,
            features=[FeatureDrift(feature=7, psi=drift), FeatureDrift(feature=3, psi=drift / 2)],
        ),
        spool=SpoolStats(dropped_total=dropped),
    )


def failed(target: str) -> UpdateReport:
    return UpdateReport(
        desired_version=2, kind="model", target=target, phase="failed", error="bad hash", ts=NOW
    )


def test_summary_counts_and_alerts_from_sql(env: tuple[TestClient, Store]) -> None:
    client, store = env
    enrolled(store, "a1", tags={"site": "berlin"}, online=True)
    enrolled(store, "a2", tags={"site": "berlin", "line": "2"}, online=False)
    enrolled(store, "a3", tags={"site": "lyon"}, online=True)
    store.create_device("p1", name="p1", tags={"site": "lyon"}, now=NOW)  # pending
    store.set_reported("a1", report("a1", "1.0.0"), NOW)
    store.set_reported("a3", report("a3", "1.1.0", failed("models/digits/1.2.0/x.efpkg")), NOW)
    store.touch_seen({"a1": NOW, "a3": NOW})
    old = NOW - 2 * 3600  # a drop long before the window is not an alert now
    store.insert_telemetry(
        [
            batch("a1", 1, drift=0.1, dropped=5, ts=old),
            batch("a1", 2, drift=0.4, dropped=5, ts=NOW - 120),
            batch("a3", 1, drift=0.05, dropped=2, ts=NOW - 600),
            batch("a3", 2, drift=0.05, dropped=9, ts=NOW - 60),
        ],
        received_at=NOW,
    )
    r = client.get("/api/v1/console/summary", headers=bearer(client, "vic"))
    assert r.status_code == 200, r.text
    s = r.json()
    assert (s["total"], s["online"]) == (4, 2)
    assert s["by_state"] == {"enrolled": 3, "pending": 1}
    assert {b["key"]: (b["total"], b["online"]) for b in s["by_tag"]} == {
        "site=berlin": (2, 1),
        "site=lyon": (2, 1),
        "line=2": (1, 0),
    }
    assert {b["key"]: b["total"] for b in s["by_model"]} == {
        "digits@1.0.0": 1,
        "digits@1.1.0": 1,
        "(none)": 1,
    }
    alerts = s["alerts"]
    assert [a["device_id"] for a in alerts["drift"]["items"]] == ["a1"]
    assert alerts["drift"]["items"][0]["value"] == pytest.approx(0.4)
    assert [a["device_id"] for a in alerts["silent"]["items"]] == ["a2"]
    assert alerts["failed_updates"]["items"][0]["device_id"] == "a3"
    assert "bad hash" in alerts["failed_updates"]["items"][0]["detail"]
    assert [(a["device_id"], a["value"]) for a in alerts["spool_drops"]["items"]] == [("a3", 9)]

    tighter = client.get(
        "/api/v1/console/summary", params={"drift_threshold": 0.01}, headers=bearer(client, "vic")
    ).json()
    assert tighter["alerts"]["drift"]["total"] == 2
    assert client.get("/api/v1/console/summary").status_code == 401


def test_update_history_keeps_each_phase_once(env: tuple[TestClient, Store]) -> None:
    client, store = env
    enrolled(store, "u1", tags={}, online=True)
    target = "models/digits/2.0.0/d.efpkg"
    for phase, progress in (
        ("downloading", 0.1),
        ("downloading", 0.6),  # progress within a phase is not history
        ("verifying", 1.0),
        ("committed", 1.0),
    ):
        update = UpdateReport(
            desired_version=3, kind="model", target=target, phase=phase, progress=progress, ts=NOW
        )
        store.set_reported("u1", report("u1", "1.0.0", update), NOW)
    store.set_reported("u1", report("u1", "2.0.0", None), NOW)
    store.set_reported("ghost", report("ghost", "1.0.0", failed(target)), NOW)  # unknown device
    r = client.get("/api/v1/console/devices/u1/updates", headers=bearer(client, "vic"))
    assert [e["phase"] for e in r.json()] == ["committed", "verifying", "downloading"]
    assert store.list_update_events("ghost") == []


def test_series_are_small_parallel_arrays(env: tuple[TestClient, Store]) -> None:
    client, store = env
    enrolled(store, "s1", tags={}, online=True)
    store.insert_telemetry(
        [batch("s1", n, drift=0.1 * n, dropped=0, ts=NOW - 100 + n) for n in range(1, 6)],
        received_at=NOW,
    )
    r = client.get(
        "/api/v1/console/devices/s1/series", params={"limit": 10}, headers=bearer(client, "vic")
    )
    s = r.json()
    assert len(s["ts"]) == 5 and s["ts"] == sorted(s["ts"])
    assert s["latency_p95_ms"] == [2.0] * 5
    assert s["mem_percent"] == [25.0] * 5
    assert s["drift_features"]["f7"] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert set(s["drift_features"]) == {"f3", "f7"}
    newest = client.get(
        "/api/v1/console/devices/s1/series",
        params={"limit": 10, "window_s": 60},
        headers=bearer(client, "vic"),
    ).json()
    assert newest["ts"] == []  # every batch is older than a minute
    assert (
        client.get("/api/v1/console/devices/nope/series", headers=bearer(client, "vic")).status_code
        == 404
    )


def test_series_keep_the_most_drifted_features_and_mark_gaps() -> None:
    b1 = batch("x", 1, drift=0.3, dropped=0, ts=NOW)
    b2 = Telemetry(device_id="x", batch_id="b2", seq=2, ts=NOW + 1, window_s=1)
    s = series_of("x", [b2, b1])  # order by ts whatever the input order
    assert s.ts == [NOW, NOW + 1]
    assert s.drift_features == {"f3": [0.15, None], "f7": [0.3, None]}
    assert s.cpu_percent == [40, None]
    assert confidence_mean([0, 0, 0, 10]) == pytest.approx(0.875)
    assert confidence_mean([]) is None


def test_session_gives_the_csrf_of_the_cookie_only(env: tuple[TestClient, Store]) -> None:
    client, _ = env
    assert client.get("/api/v1/console/session").status_code == 401
    r = client.post(
        "/api/v1/auth/login",
        json={"username": "alice", "password": "alice-password", "session": True},
    )
    cookie = r.cookies[SESSION_COOKIE]
    me = client.get("/api/v1/console/session").json()
    assert me == {"username": "alice", "role": "admin", "csrf_token": csrf_for(cookie)}
    assert me["csrf_token"] == r.json()["csrf_token"]
    refused = client.post(
        "/api/v1/users", json={"username": "x", "role": "viewer", "password": "x" * 8}
    )
    assert refused.status_code == 403
    made = client.post(
        "/api/v1/users",
        json={"username": "x", "role": "viewer", "password": "x" * 8},
        headers={CSRF_HEADER: me["csrf_token"]},
    )
    assert made.status_code == 201
    client.cookies.clear()
    token = bearer(client, "alice")
    assert client.get("/api/v1/console/session", headers=token).json()["csrf_token"] is None


def test_console_pages_are_served_with_a_strict_policy(env: tuple[TestClient, Store]) -> None:
    client, _ = env
    root = client.get("/", follow_redirects=False)
    assert root.status_code in (302, 307) and root.headers["location"] == "/console/"
    page = client.get("/console/")
    assert page.status_code == 200 and '<main id="main"' in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    js = client.get("/console/js/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "http://" not in js.text and "https://" not in js.text  # nothing off the server
    assert client.get("/console/js/../../../auth.py").status_code == 404
