"""API latency with 10,000 devices and a day of per-minute rollups in the store,
over real HTTP: the fleet server runs as ``fleet-server run`` does (uvicorn on a
loopback port) and an ``httpx`` client times each request to its last byte.

A day of rollups for all 10,000 devices would be 14.4 M rows; we load a full
day for 200 devices (288,000 rows) and measure the per-device query (whose
cost depends on that device's rows, not the table size, thanks to the primary
key) and an aggregate over a selector that picks those 200 devices.  Each request
is timed 200 times after 10 untimed ones; p50/p95/p99 are percentiles of those 200
samples.  The baseline is ``GET /healthz`` (no database, no authentication) over the
same connection in the same run, so the ratio is what the request costs beyond
HTTP itself.  SQLite; "API latency on both backends" has the same requests on
PostgreSQL beside it."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from ._served import Latency, figures, sampled, served, timed, viewer_client

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


STORE = f"{DEVICES} devices, {WITH_ROLLUPS * DAY:,} rollup rows"
MATCHING = sum(1 for i in range(DEVICES) if i % 50 == 7 and i % 3 != 0)
"""Devices ``tag:site=s7 and online`` selects, as ``populate`` makes them."""
SELECTOR = "GET /devices?selector=tag:site=s7 and online"
SELECTOR_PATH = "/api/v1/devices?limit=100&selector=tag:site%3Ds7%20and%20online"


def cases(now: float) -> list[tuple[str, str, str]]:
    """The four requests: (label, path, what the note adds)."""
    day = f"since={now - 86400}&until={now}"
    return [
        ("GET /devices (page of 100)", "/api/v1/devices?limit=100&offset=5000", ""),
        (
            SELECTOR,
            SELECTOR_PATH,
            f"tag:site=s7 and online: {MATCHING} devices",
        ),
        (
            "GET /devices/{id}/telemetry (1 day of minutes)",
            f"/api/v1/devices/d00042/telemetry?{day}",
            "",
        ),
        (
            "GET /telemetry/aggregate (200 devices, 1 day)",
            f"/api/v1/telemetry/aggregate?selector=tag:rollups%3DTrue&{day}",
            "",
        ),
    ]


def row(label: str, latency: Latency, base: Latency, backend: str, more: str) -> dict[str, object]:
    extra = f" ({more})" if more else ""
    note = f"{sampled(latency)}; {backend}: {STORE}"
    return {"benchmark": label, **figures(latency, base), "note": note + extra}


def measure(
    client: httpx.Client, now: float, backend: str, label: Callable[[str], str]
) -> list[dict[str, object]]:
    """``/healthz`` (the baseline), then the four requests, each timed over ``client``."""
    found = client.get(SELECTOR_PATH).json()["total"]
    if found != MATCHING:  # e.g. presence reset after populating: the labels would lie
        raise RuntimeError(f"the selector found {found} devices, not {MATCHING}")
    base = timed(client, "/healthz")
    rows = [row(label("GET /healthz (baseline)"), base, base, backend, "no database")]
    for name, path, more in cases(now):
        rows.append(row(label(name), timed(client, path), base, backend, more))
    return rows


def run() -> list[dict[str, object]]:
    folder = Path(tempfile.mkdtemp(prefix="edgefleet-api-bench-"))
    now = time.time()
    with served(folder) as server:
        populate(folder / "fleet.db", now)  # after start, which marks every device offline
        with viewer_client(server) as client:
            return measure(client, now, "SQLite", lambda name: name)
