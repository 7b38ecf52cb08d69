"""Console pages at 10,000 devices: what each page asks the server for, against the
plain device page the existing API already served (ratio = page / baseline, p50 over
p50, same server, same connection, same run).

Over real HTTP: the fleet server runs as ``fleet-server run`` runs it (uvicorn on a
loopback port) and an ``httpx`` client times each request to its last byte, 200
times after 10 untimed ones; p50/p95/p99 are percentiles of those samples.
The overview's summary is computed in SQL (``GROUP BY`` over extracted columns,
``json_each`` over tags, alerts over the rollups of the window); the devices page
is the paginated, selector-filtered list; the device page's chart series come
from the newest raw batches of one device."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path

from edgefleet_contract.messages import Telemetry
from fleet_server.server import FleetServer
from tests.harness import system_stats

from ._served import Latency, figures, sampled, served, timed, viewer_client
from .bench_api import DEVICES, populate

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


def fill(server: FleetServer, folder: Path, now: float) -> None:
    """``bench_api``'s devices, the alert window's rollups, one device's raw batches."""
    populate(folder / "fleet.db", now)
    _window_rollups(folder / "fleet.db", now)
    system = system_stats(cpu_percent=30, disk_used_bytes=0, disk_total_bytes=1)
    server.store.insert_telemetry(
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


CASES = [
    ("overview: GET /console/summary", "/api/v1/console/summary"),
    (
        "devices: GET /devices?selector=tag:site=s7 and online (page of 50)",
        "/api/v1/devices?limit=50&offset=0&selector=tag:site%3Ds7%20and%20online",
    ),
    (
        f"device: GET /console/devices/{{id}}/series ({BATCHES} batches)",
        f"/api/v1/console/devices/d00042/series?window_s=900&limit={BATCHES}",
    ),
]


def row(request: str, latency: Latency, base: Latency, store: str) -> dict[str, object]:
    return {"request": request, **figures(latency, base), "note": f"{sampled(latency)}; {store}"}


def run() -> list[dict[str, object]]:
    folder = Path(tempfile.mkdtemp(prefix="edgefleet-console-bench-"))
    now = time.time()
    store = f"SQLite, {DEVICES} devices"
    with served(folder) as server:
        fill(server, folder, now)  # after start, which marks every device offline
        with viewer_client(server) as client:
            base = timed(client, "/api/v1/devices?limit=100&offset=5000")
            rows = [row("baseline: GET /devices (page of 100)", base, base, store)]
            for name, path in CASES:
                rows.append(row(name, timed(client, path), base, store))
    return rows
