"""Hardening: selector nesting is bounded; the API docs load only local assets; desired
state goes only through the twin.

Regression tests for the security review of issue 19: each failed before its fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fleet_server.api import ApiContext, create_app
from fleet_server.auth import hash_password
from fleet_server.store import open_store
from fleet_server.store.base import Store

from .api_kit import api_context, login
from .hardening_kit import throttled_api


@pytest.fixture
def api(tmp_path: Path) -> tuple[TestClient, Store, ApiContext]:
    return throttled_api(tmp_path)


@pytest.mark.parametrize(
    "selector", ["(" * 330 + "online" + ")" * 330, "not " * 400 + "online", "(not " * 200 + "all"]
)
def test_deep_selectors_are_a_422_without_a_traceback(
    api: tuple[TestClient, Store, ApiContext], selector: str, caplog: pytest.LogCaptureFixture
) -> None:
    client, _, _ = api
    headers = login(client, "vic")
    with caplog.at_level("INFO"):
        r = client.get("/api/v1/devices", headers=headers, params={"selector": selector})
    assert r.status_code == 422, r.text
    assert "at most 32 levels" in r.json()["detail"]
    assert not [rec for rec in caplog.records if rec.exc_info or rec.levelname == "ERROR"]
    # 32 levels still parse
    fine = "(" * 32 + "online" + ")" * 32
    assert client.get("/api/v1/devices", headers=headers, params={"selector": fine}).is_success


def test_api_docs_load_nothing_from_elsewhere_and_carry_the_csp(
    api: tuple[TestClient, Store, ApiContext],
) -> None:
    import re

    client, _, _ = api
    r = client.get("/api/docs")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp
    assert not re.search(r"(src|href)=\"(https?:)?//", r.text), r.text  # no CDN, no other host
    assert "<script>" not in r.text  # no inline script (the CSP would refuse it anyway)
    for src in re.findall(r'(?:src|href)="([^"]+)"', r.text):
        asset = client.get(src)
        assert asset.status_code == 200 and asset.content, src
        assert "script-src 'self'" in asset.headers["content-security-policy"]


def test_api_docs_render_in_chromium_under_the_csp(fleet: Any) -> None:
    import shutil

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    from .harness import require

    require(Path(chromium).exists(), "Debian's chromium", "run .ci/setup-system")
    from playwright import sync_api

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on(  # CSP violations are reported on the console
                "console",
                lambda m: problems.append(m.text) if m.type == "error" else None,
            )
            page.on(
                "response",
                lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            outside: list[str] = []
            page.on(
                "request",
                lambda req: (
                    outside.append(req.url)
                    if not req.url.startswith(fleet.settings.api_url)
                    else None
                ),
            )
            page.goto(f"{fleet.settings.api_url}/api/docs")
            title = page.locator(".swagger-ui .info .title")
            sync_api.expect(title).to_contain_text("edgefleet fleet server", timeout=60_000)
            assert page.locator(".opblock-tag").count() > 3  # the routes are listed
            assert outside == [] and problems == [], (outside, problems)
        finally:
            browser.close()


def test_a_raw_set_desired_command_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path / "fleet.db")
    store.create_user("olga", role="operator", password_hash=hash_password("olga-password"), now=0)
    sent: list[Any] = []

    class Outbox:
        def send_command(self, device_id: str, command: Any) -> None:
            sent.append((device_id, command))

    ctx = api_context(tmp_path, store, token_ttl_s=60, commands=Outbox())
    client = TestClient(create_app(ctx))
    headers = login(client, "olga")
    assert client.post("/api/v1/devices", headers=headers, json={"id": "w-9"}).status_code == 201
    r = client.post(
        "/api/v1/devices/w-9/commands",
        headers=headers,
        json={"name": "set_desired", "args": {"version": 2**63 - 1}},
    )
    assert r.status_code == 422 and "twin/desired" in r.json()["detail"]
    assert sent == [] and store.list_commands("w-9") == []
    # the twin route still works and numbers versions itself
    r = client.put(
        "/api/v1/devices/w-9/twin/desired",
        headers=headers,
        json={"config": {"telemetry_interval_s": 5}},
    )
    assert r.status_code == 200 and r.json()["desired"]["version"] == 1
    assert [c.name for _, c in sent] == ["set_desired"]
    assert (
        client.post(
            "/api/v1/devices/w-9/commands", headers=headers, json={"name": "reboot"}
        ).status_code
        == 202
    )
