"""A real fleet server for the API benches, and request latencies timed over its socket.

An in-process test client skips the socket, HTTP parsing and uvicorn's event loop, so
its figures flatter; these benches start ``FleetServer`` as ``fleet-server run`` does
(managed broker, ingest, uvicorn on a free loopback port) and time each request from
an ``httpx`` client on one kept-alive connection, as a dashboard or script would.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from fleet_server.auth import Authenticator, hash_password
from fleet_server.config import ApiSettings, BrokerSettings, DatabaseSettings, ServerSettings
from fleet_server.server import FleetServer, initialize
from fleet_server.store.base import Store

from ._lab import free_port

SAMPLES = 200
"""Timed requests per endpoint: enough for a p99 that is not simply the slowest one."""
WARMUP = 10
"""Untimed requests first (connection, caches, the database's pages)."""


@contextlib.contextmanager
def served(folder: Path, database_url: str = "") -> Iterator[FleetServer]:
    """A started fleet server on free loopback ports, its data in ``folder``."""
    settings = ServerSettings(
        data_dir=folder,
        api=ApiSettings(port=free_port()),
        broker=BrokerSettings(port=free_port()),
        database=DatabaseSettings(url=database_url),
    )
    initialize(settings, admin_password="bench-admin-password")
    server = FleetServer(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def viewer_client(server: FleetServer) -> httpx.Client:
    """An HTTP client of the server's API with the token of a viewer, who may read it all."""
    store: Store = server.store
    store.create_user("bench", role="viewer", password_hash=hash_password("bench-password"), now=0)
    token, _ = Authenticator(store).issue_token(store.get_user("bench"), name="b", ttl_s=3600)
    return httpx.Client(
        base_url=server.settings.api_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


@dataclass(frozen=True)
class Latency:
    """One endpoint's timed requests, in milliseconds."""

    samples: tuple[float, ...]

    def percentile(self, p: int) -> float:
        """The ``p``-th percentile, interpolated between samples (never just the maximum)."""
        return statistics.quantiles(self.samples, n=100, method="inclusive")[p - 1]

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p95(self) -> float:
        return self.percentile(95)

    @property
    def p99(self) -> float:
        return self.percentile(99)


def timed(client: httpx.Client, path: str, n: int = SAMPLES) -> Latency:
    """``n`` GETs of ``path`` after ``WARMUP`` untimed ones, each from send to last byte."""
    for _ in range(WARMUP):
        client.get(path).raise_for_status()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(path)
        samples.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
    return Latency(tuple(samples))


def figures(latency: Latency, baseline: Latency) -> dict[str, object]:
    """A row's latency cells: percentiles, and the p50 as a multiple of the baseline's."""
    return {
        "p50 ms": f"{latency.p50:.1f}",
        "p95 ms": f"{latency.p95:.1f}",
        "p99 ms": f"{latency.p99:.1f}",
        "x baseline (p50)": f"{latency.p50 / baseline.p50:.1f}",
    }


def sampled(latency: Latency) -> str:
    """How the figures were taken, for a row's note."""
    return f"{len(latency.samples)} requests over HTTP after {WARMUP} warm-up"
