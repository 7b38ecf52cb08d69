"""Console pages at 10,000 devices: what each page asks the server for, against the
plain device page the existing API already served (ratio = page / baseline, same run).

The overview's summary is computed in SQL (``GROUP BY`` over extracted columns,
``json_each`` over tags, alerts over the rollups of the window); the devices page
is the paginated, selector-filtered list; the device page's chart series come
from the newest raw batches of one device."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from edgefleet_contract.messages import SystemStats, Telemetry
from fleet_server.store import open_store

from ._lab import machine
from .bench_api import DEVICES, populate, timed, viewer_app

WINDOW_MINUTES = 15
BATCHES = 720


def _window_rollups(path: Path, now: float) -> None:
    """Every device has the last 15 minutes of rollups (what the alerts scan)."""
    conn = sqlite3.connect(path)
    start = (now // 60 - WINDOW_MINUTES) * 60
    conn.executemany(
        "INSERT OR IGNORE INTO rollups VALUES (?, ?, 6, 600, 1, 30.0, 6, 9.0, 120.0, 1e8, 5e7, "
        "6, ?, 10, 9, 60, ?)",
        (
            (f"d{i:05d}", start + m * 60, 0.3 if i % 97 == 0 else 0.02, m if i % 89 == 0 else 0)
            for i in range(DEVICES)
            for m in range(WINDOW_MINUTES + 1)
        ),
    )
    conn.commit()
    conn.close()


def run() -> list[dict[str, object]]:
    folder = Path(tempfile.mkdtemp(prefix="edgefleet-console-bench-"))
    store = open_store(folder / "fleet.db")
    now = time.time()
    populate(folder / "fleet.db", now)
    _window_rollups(folder / "fleet.db", now)
    system = SystemStats(
        cpu_percent=30,
        mem_used_bytes=1,
        mem_total_bytes=2,
        rss_bytes=1,
        disk_used_bytes=0,
        disk_total_bytes=1,
        uptime_s=1,
    )
    store.insert_telemetry(
        [
            Telemetry(
                device_id="d00042",
                batch_id=f"b{n}",
                seq=n,
                ts=now - BATCHES + n,
                window_s=1,
                system=system,
            )
            for n in range(BATCHES)
        ],
        received_at=now,
    )
    app, headers = viewer_app(folder, store, now)
    baseline_url = "/api/v1/devices?limit=100&offset=5000"
    cases = [
        ("overview: GET /console/summary", "/api/v1/console/summary", 20),
        (
            "devices: GET /devices?selector=tag:site=s7 and online (page of 50)",
            "/api/v1/devices?limit=50&offset=0&selector=tag:site%3Ds7%20and%20online",
            20,
        ),
        (
            f"device: GET /console/devices/{{id}}/series ({BATCHES} batches)",
            "/api/v1/console/devices/d00042/series?window_s=900&limit=720",
            20,
        ),
    ]
    rows: list[dict[str, object]] = []
    with TestClient(app) as client:
        base, _ = timed(client, baseline_url, headers, 50)
        rows.append(
            {
                "request": "baseline: GET /devices (page of 100)",
                "p50 ms": f"{base:.1f}",
                "p99 ms": "",
                "x baseline": "1.0",
            }
        )
        for name, url, n in cases:
            p50, p99 = timed(client, url, headers, n)
            rows.append(
                {
                    "request": name,
                    "p50 ms": f"{p50:.1f}",
                    "p99 ms": f"{p99:.1f}",
                    "x baseline": f"{p50 / base:.1f}",
                }
            )
    store.close()
    return rows


if __name__ == "__main__":
    from ._lab import table

    print(f"machine: {machine()}")
    print(table(run()))
