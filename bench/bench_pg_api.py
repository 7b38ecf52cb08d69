"""API latency on both backends with 10,000 devices and a day of per-minute rollups:
``bench_api``'s four requests, on PostgreSQL (a private cluster) and on SQLite, same
data, same run.  Selectors are compiled to SQL predicates, so the filtered list is an
indexed scan and a count in the database, not a pass over every device in Python (it
was ~0.3 s at 10,000 devices).  Figures are medians (p50) and p99 over each request's
repetitions, through FastAPI's test client (no network).  The selector here compares
no versions; on PostgreSQL one that does (``firmware:>=1.2``) is tested in Python over
every device, as before, because PEP 440's order is not SQL's."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import psycopg
from fastapi.testclient import TestClient

from fleet_server.store import open_store
from tests.pgserver import PgServer

from .bench_api import DAY, DEVICES, WITH_ROLLUPS, populate, timed, viewer_app

_ROLLUP = (6, 600, 1, 30.0, 6, 9.0, 120.0, 1e8, 5e7, 6, 0.02, 10, 9, 60, 0)
"""``bench_api``'s rollup values (every column after device and minute)."""
SELECTOR_LABEL = "selector-filtered device list at 10,000 devices, {backend} p50 ms"


def populate_pg(dsn: str, now: float) -> None:
    """The same rows as ``bench_api.populate``, by COPY."""
    reported = json.dumps(
        {"v": 1, "device_id": "x", "ts": now, "agent_version": "0.1.0", "health": "ok"}
    )
    start = (now // 60 - DAY) * 60
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY devices (id, name, tags, groups, state, created_at, online, desired_version, "
            "reported, agent_version, health) FROM STDIN"
        ) as copy:
            for i in range(DEVICES):
                tags = json.dumps({"site": f"s{i % 50}", "rollups": str(i < WITH_ROLLUPS)})
                did = f"d{i:05d}"
                row = (did, did, tags, "[]", "enrolled", now, int(i % 3 != 0), 0)
                copy.write_row((*row, reported.replace('"x"', f'"{did}"'), "0.1.0", "ok"))
        with cur.copy("COPY rollups FROM STDIN") as copy:
            for i in range(WITH_ROLLUPS):
                for m in range(DAY):
                    copy.write_row((f"d{i:05d}", start + m * 60, *_ROLLUP))
        cur.execute("ANALYZE")


def cases(now: float) -> list[tuple[str, str, int]]:
    day = f"since={now - 86400}&until={now}"
    return [
        ("selector", "/api/v1/devices?limit=100&selector=tag:site%3Ds7%20and%20online", 50),
        ("GET /devices (page of 100)", "/api/v1/devices?limit=100&offset=5000", 100),
        (
            "GET /devices/{id}/telemetry (1 day of minutes)",
            f"/api/v1/devices/d00042/telemetry?{day}",
            50,
        ),
        (
            "GET /telemetry/aggregate (200 devices, 1 day)",
            f"/api/v1/telemetry/aggregate?selector=tag:rollups%3DTrue&{day}",
            10,
        ),
    ]


def measure(backend: str, url: str, folder: Path, now: float) -> list[dict[str, object]]:
    store = open_store(url)
    if backend == "PostgreSQL":
        populate_pg(url, now)
    else:
        populate(Path(url), now)
    app, headers = viewer_app(folder, store, now)
    rows: list[dict[str, object]] = []
    with TestClient(app) as client:
        for name, path, n in cases(now):
            p50, p99 = timed(client, path, headers, n)
            label = SELECTOR_LABEL.format(backend=backend) if name == "selector" else name
            rows.append(
                {
                    "benchmark": label if name == "selector" else f"{name}, {backend}",
                    "p50 ms": f"{p50:.1f}",
                    "p99 ms": f"{p99:.1f}",
                    "requests": n,
                    "store": f"{backend}: {DEVICES} devices, {WITH_ROLLUPS * DAY:,} rollup rows"
                    + (" (tag:site=s7 and online: 133 devices)" if name == "selector" else ""),
                }
            )
    store.close()
    return rows


def run() -> list[dict[str, object]]:
    now = time.time()
    pg = PgServer().start()
    try:
        with pg.database() as dsn:
            rows = measure("PostgreSQL", dsn, Path(tempfile.mkdtemp(prefix="bench-pg-")), now)
    finally:
        pg.destroy()
    folder = Path(tempfile.mkdtemp(prefix="bench-sqlite-"))
    rows += measure("SQLite", str(folder / "fleet.db"), folder, now)
    return rows


if __name__ == "__main__":
    from ._lab import machine, table

    print(f"machine: {machine()}")
    print(table(run()))
