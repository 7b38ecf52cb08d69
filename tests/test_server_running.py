"""What the running server does on its own or only over real HTTP: the retention pass of
its maintenance loop, and the console session cookie behind a TLS-terminating proxy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from fleet_server.server import FleetServer, initialize

from .harness import ADMIN_PASSWORD, server_settings, wait_for
from .test_store import batch

DAY = 86400.0


def test_the_maintenance_loop_prunes_old_telemetry_and_keeps_the_rest(tmp_path: Path) -> None:
    settings: Any = server_settings(tmp_path / "fleet")
    settings.telemetry.raw_retention_s = 3600
    initialize(settings, admin_password=ADMIN_PASSWORD)
    server = FleetServer(settings)
    server.maintenance_interval_s = 0.2  # the loop itself, run often
    now = time.time()
    server.store.create_device("ret-1", name="ret-1", tags={}, now=now - 3 * DAY)
    assert (
        server.store.insert_telemetry([batch("ret-1", 1, now - 2 * DAY)], received_at=now - 2 * DAY)
        == 1
    )
    assert server.store.insert_telemetry([batch("ret-1", 2, now - 60)], received_at=now - 60) == 1
    server.start()
    try:

        def ids() -> list[str]:
            return [b.batch_id for b in server.store.query_raw("ret-1", since=0, until=now + DAY)]

        # One pass removes the two-day-old batch and keeps the fresh one (inside retention).
        wait_for(lambda: ids() == ["b2"], 30, "the two-day-old batch pruned")
    finally:
        server.stop()


def test_the_session_cookie_is_secure_behind_a_tls_proxy(fleet: FleetServer) -> None:
    """The server speaks plain HTTP; the documented proxy (docs/operations.md) says the
    client's scheme in ``X-Forwarded-Proto``, which uvicorn trusts from loopback only."""
    login = {"username": "admin", "password": ADMIN_PASSWORD, "session": True}
    url = f"{fleet.settings.api_url}/api/v1/auth/login"
    over_tls = httpx.post(url, json=login, headers={"X-Forwarded-Proto": "https"})
    assert over_tls.status_code == 200, over_tls.text
    cookie = over_tls.headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    plain = httpx.post(url, json=login)  # positive control: plain HTTP gets no Secure flag
    assert plain.status_code == 200 and "Secure" not in plain.headers["set-cookie"]
