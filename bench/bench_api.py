"""API latency with 10,000 devices and a day of per-minute rollups in the store.

A day of rollups for all 10,000 devices would be 14.4 M rows; we load a full
day for 200 devices (288,000 rows) and measure the per-device query (whose
cost depends on that device's rows, not the table size, thanks to the primary
key) and an aggregate over a selector that picks those 200 devices.
The figures below were measured while selectors were evaluated in Python over every
device (a filtered list cost ~0.3 s at 10,000); selectors are SQL predicates now: see
"API latency on both backends" for today's figures on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from fleet_server.api import ApiContext, create_app
from fleet_server.auth import Authenticator, hash_password
from fleet_server.config import ServerSettings
from fleet_server.enrollment import Enrollment
from fleet_server.pki import FleetCA
from fleet_server.store import Store, open_store

from ._lab import machine, table

DEVICES = 10_000
WITH_ROLLUPS = 200
DAY = 1440


def populate(path: Path, now: float) -> None:
    conn = sqlite3.connect(path)
    reported = json.dumps(
        {"v": 1, "device_id": "x", "ts": now, "agent_version": "0.1.0", "health": "ok"}
    )
    conn.executemany(
        "INSERT INTO devices (id, name, tags, groups, state, created_at, online, desired_version, "
        "reported, agent_version, health) VALUES (?, ?, ?, '[]', 'enrolled', ?, ?, 0, ?, "
        "'0.1.0', 'ok')",
        [
            (
                f"d{i:05d}",
                f"d{i:05d}",
                json.dumps({"site": f"s{i % 50}", "rollups": str(i < WITH_ROLLUPS)}),
                now,
                i % 3 != 0,
                reported.replace('"x"', f'"d{i:05d}"'),
            )
            for i in range(DEVICES)
        ],
    )
    start = (now // 60 - DAY) * 60
    conn.executemany(
        "INSERT INTO rollups VALUES (?, ?, 6, 600, 1, 30.0, 6, 9.0, 120.0, 1e8, 5e7, 6, 0.02, "
        "10, 9, 60, 0)",
        ((f"d{i:05d}", start + m * 60) for i in range(WITH_ROLLUPS) for m in range(DAY)),
    )
    conn.commit()
    conn.close()


def timed(client: TestClient, url: str, headers: dict[str, str], n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(url, headers=headers)
        samples.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.text
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def viewer_app(folder: Path, store: Store, now: float) -> tuple[FastAPI, dict[str, str]]:
    """The REST app over ``store``, and the headers of a viewer who may read all of it."""
    store.create_user("bench", role="viewer", password_hash=hash_password("bench-password"), now=0)
    token, _ = Authenticator(store).issue_token(store.get_user("bench"), name="b", ttl_s=3600)
    ca = FleetCA.create(folder / "ca", now=now)
    app = create_app(
        ApiContext(
            settings=ServerSettings(data_dir=folder),
            store=store,
            enrollment=Enrollment(store, ca, token_ttl_s=60, cert_validity_s=60),
        )
    )
    return app, {"Authorization": f"Bearer {token}"}


def run() -> list[dict[str, object]]:
    folder = Path(tempfile.mkdtemp(prefix="edgefleet-api-bench-"))
    store = open_store(folder / "fleet.db")
    now = time.time()
    populate(folder / "fleet.db", now)
    app, headers = viewer_app(folder, store, now)
    day = f"since={now - 86400}&until={now}"
    cases = [
        ("GET /devices (page of 100)", "/api/v1/devices?limit=100&offset=5000", 200),
        (
            "GET /devices?selector=tag:site=s7 and online",
            "/api/v1/devices?limit=100&selector=tag:site%3Ds7%20and%20online",
            30,
        ),
        (
            "GET /devices/{id}/telemetry (1 day of minutes)",
            f"/api/v1/devices/d00042/telemetry?{day}",
            100,
        ),
        (
            "GET /telemetry/aggregate (200 devices, 1 day)",
            f"/api/v1/telemetry/aggregate?selector=tag:rollups%3DTrue&{day}",
            10,
        ),
    ]
    rows: list[dict[str, object]] = []
    with TestClient(app) as client:
        for name, url, n in cases:
            p50, p99 = timed(client, url, headers, n)
            rows.append(
                {
                    "benchmark": name,
                    "p50 ms": f"{p50:.1f}",
                    "p99 ms": f"{p99:.1f}",
                    "requests": n,
                    "store": f"{DEVICES} devices, {WITH_ROLLUPS * DAY:,} rollup rows",
                }
            )
    store.close()
    return rows


if __name__ == "__main__":
    print(f"machine: {machine()}")
    print(table(run()))
