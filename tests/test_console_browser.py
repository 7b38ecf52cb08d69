"""The web console in a real headless Chromium against a real fleet.

Real server (managed mosquitto with mTLS, SQLite), real ``edge-agent``
processes and devices on the agent's own MQTT link; Debian's ``chromium``
driven by Playwright.  Screenshots of the main pages go to ``$SCREENSHOTS_DIR``
when set (``make screenshots`` points it at docs/screenshots).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .console_fleet import OPERATOR_PASSWORD, VIEWER_PASSWORD, ConsoleFleet
from .harness import ADMIN_PASSWORD, wait_for

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's chromium is not installed (.ci/setup-system installs it)",
)
sync_api = pytest.importorskip("playwright.sync_api")
Page = sync_api.Page
expect = sync_api.expect
WAIT_MS = 60_000
DASH = "\N{EN DASH}"  # the pager writes ranges with an en dash
expect.set_options(timeout=30_000)  # a busy 2-core CI machine, not a speed test


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleFleet]:
    f = ConsoleFleet(tmp_path_factory.mktemp("console"), agents=3, extra_devices=40)
    try:
        f.start_rich()
        f.record_training_run("run-7f3a")
        yield f
    finally:
        f.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: object) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})  # type: ignore[attr-defined]
    p = context.new_page()
    p.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.on(  # CSP violations and script errors; expected 401/404 answers are not errors
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    try:
        yield p
    finally:
        context.close()
    assert not errors, errors


def shot(page: Page, name: str) -> None:
    folder = os.environ.get("SCREENSHOTS_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(300)  # let a just-started refresh finish painting
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def login(page: Page, url: str, user: str, password: str) -> None:
    page.goto(f"{url}/console/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#who .user")).to_contain_text(user)


def test_login_then_devices_come_online_live(fleet: ConsoleFleet, page: Page) -> None:
    page.goto(f"{fleet.url}/console/")
    expect(page.get_by_role("heading", name="Log in to the fleet console")).to_be_visible()
    shot(page, "login")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("wrong-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("wrong username or password")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Fleet overview")).to_be_visible()

    page.goto(f"{fleet.url}/console/#/devices?selector=id:gw-*")
    expect(page.locator("#device-count")).to_have_text("0 devices")
    page.evaluate("window.__sameDocument = true")
    fleet.start_agents()
    rows = page.locator(".results tbody tr", has=page.locator(".presence.on"))
    expect(rows).to_have_count(len(fleet.agent_ids), timeout=90_000)
    assert page.evaluate("window.__sameDocument") is True  # live: no reload happened
    expect(page.locator("#device-count")).to_have_text(f"1{DASH}3 of 3")


def test_overview_counts_and_alerts(fleet: ConsoleFleet, page: Page) -> None:
    fleet.start_agents()
    fleet.wait_online(["cam-01", "cam-02", "cam-03", *fleet.agent_ids])
    login(page, fleet.url, "admin", ADMIN_PASSWORD)
    expect(page.locator(".kpi", has_text="devices").locator(".kpi-value")).to_have_text(
        str(40 + 3 + len(fleet.agent_ids))
    )
    drift = page.locator('.alert-card[data-alert="drift"]')
    expect(drift.locator("a", has_text="cam-02")).to_be_visible(timeout=WAIT_MS)
    failed = page.locator('.alert-card[data-alert="failed_updates"]')
    expect(failed).to_contain_text("self-test mismatch")
    expect(page.locator('.alert-card[data-alert="spool_drops"]').locator("a")).to_have_text(
        "cam-02"
    )
    expect(page.locator(".bars a", has_text="digits@1.2.0")).to_be_visible()
    expect(page.locator(".panel", has_text="Active rollouts")).to_contain_text("No active rollout")
    expect(page.locator(".overview path.line").nth(2)).to_be_attached()
    shot(page, "overview")


def test_device_page_draws_live_charts(fleet: ConsoleFleet, page: Page) -> None:
    fleet.start_agents()
    fleet.wait_online(fleet.agent_ids)
    login(page, fleet.url, "admin", ADMIN_PASSWORD)
    page.goto(f"{fleet.url}/console/#/devices/{fleet.agent_ids[0]}")
    cpu = page.locator("figure.chart", has_text="CPU and memory").locator("path.line").first
    expect(cpu).to_be_visible()
    first = int(cpu.get_attribute("data-points") or 0)
    path = cpu.get_attribute("d") or ""
    assert path.startswith("M") and path.count("L") >= 1, path
    # the chart keeps drawing new batches without a reload
    fresh = page.locator("figure.chart", has_text="CPU and memory").locator("path.line").first
    wait_for(lambda: int(fresh.get_attribute("data-points") or 0) > first, 60, "a new point")

    page.goto(f"{fleet.url}/console/#/devices/cam-02")
    drift = page.locator("figure.chart", has_text="Drift per feature")
    expect(drift.locator("path.line")).to_have_count(5)  # the max and four features
    expect(drift.locator("path.line").first).to_have_attribute("data-series", "max")
    latency = page.locator("figure.chart", has_text="Latency").locator("path.line")
    expect(latency).to_have_count(3)
    expect(page.locator("[data-diff]").first).to_be_visible()
    page.get_by_label("Config key").fill("telemetry_interval_s")
    page.get_by_label("Value").fill("2")
    page.get_by_role("button", name="Set desired").click()
    expect(page.locator("code", has_text="config.telemetry_interval_s")).to_be_visible()
    page.get_by_role("button", name="Send command").click()
    expect(
        page.locator(".panel", has_text="Recent commands").locator("tbody tr")
    ).not_to_have_count(0)
    shot(page, "device")

    page.goto(f"{fleet.url}/console/#/devices/cam-03")
    expect(page.locator(".panel", has_text="Update history")).to_contain_text("self-test mismatch")


def test_devices_selector_and_pagination(fleet: ConsoleFleet, page: Page) -> None:
    login(page, fleet.url, "admin", ADMIN_PASSWORD)
    page.goto(f"{fleet.url}/console/#/devices?limit=25")
    expect(page.locator("#device-count")).to_contain_text(f"1{DASH}25 of")
    page.get_by_role("link", name="Next →").click()
    expect(page.locator("#device-count")).to_contain_text(f"26{DASH}")
    page.get_by_label("Selector").fill("tag:site=lyon and tag:line=1")
    page.get_by_label("Selector").press("Enter")
    expect(page.locator("#device-count")).to_have_text(f"1{DASH}4 of 4")  # sensors 1, 13, 25, 37
    page.get_by_label("Selector").fill("colour:red and")
    page.get_by_label("Selector").press("Enter")
    expect(page.get_by_role("alert")).to_be_visible()  # the parser's message, not a blank table
    page.goto(f"{fleet.url}/console/#/devices?limit=25")
    expect(page.locator(".presence.on").first).to_be_visible()
    shot(page, "devices")


def test_viewer_sees_no_buttons_and_the_server_refuses(fleet: ConsoleFleet, page: Page) -> None:
    login(page, fleet.url, "vera", VIEWER_PASSWORD)
    nav = page.locator("#nav")
    expect(nav.get_by_role("link", name="Devices")).to_be_visible()
    expect(nav.get_by_role("link", name="Audit log")).to_have_count(0)
    expect(nav.get_by_role("link", name="Users & tokens")).to_have_count(0)
    page.goto(f"{fleet.url}/console/#/devices")
    expect(page.locator("#device-count")).to_be_visible()
    expect(page.get_by_text("Add a device")).to_have_count(0)
    page.goto(f"{fleet.url}/console/#/devices/cam-01")
    expect(page.locator("#charts path.line").first).to_be_visible()
    expect(page.locator("button")).to_have_count(1)  # only "Log out"
    forced = page.evaluate(
        """async () => {
            const s = await (await fetch('/api/v1/console/session')).json();
            const r = await fetch('/api/v1/devices/cam-01/commands', {method: 'POST',
              headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf_token},
              body: JSON.stringify({name: 'reboot'})});
            return [r.status, (await r.json()).detail];
        }"""
    )
    assert forced[0] == 403 and "operator" in forced[1], forced
    page.goto(f"{fleet.url}/console/#/audit")
    expect(page.get_by_text("This page needs the admin role.")).to_be_visible()


def test_post_without_csrf_header_is_refused(fleet: ConsoleFleet, page: Page) -> None:
    login(page, fleet.url, "otto", OPERATOR_PASSWORD)
    result = page.evaluate(
        """async () => {
            const body = JSON.stringify({id: 'csrf-probe'});
            const headers = {'Content-Type': 'application/json'};
            const bare = await fetch('/api/v1/devices', {method: 'POST', headers, body});
            const s = await (await fetch('/api/v1/console/session')).json();
            headers['X-CSRF-Token'] = s.csrf_token;
            const good = await fetch('/api/v1/devices', {method: 'POST', headers, body});
            return [bare.status, (await bare.json()).detail, good.status];
        }"""
    )
    assert result[0] == 403 and "X-CSRF-Token" in result[1], result
    assert result[2] == 201, result  # the same request with the header goes through


def test_keyboard_only_login_and_navigation(fleet: ConsoleFleet, page: Page) -> None:
    page.goto(f"{fleet.url}/console/")
    expect(page.get_by_label("Username")).to_be_focused()
    page.keyboard.type("admin")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type(ADMIN_PASSWORD)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Fleet overview")).to_be_visible()
    for _ in range(60):  # tab through the overview and the chrome to the navigation
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Devices":
            break
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # focus is visible
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Devices")).to_be_visible()
    expect(page.locator(".results a").first).to_be_visible()
    for _ in range(40):  # on through the filter form to the first device in the table
        page.keyboard.press("Tab")
        if page.evaluate("!!document.activeElement.closest('.results')"):
            break
    device = page.evaluate("document.activeElement.textContent")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=f"Devices / {device}")).to_be_visible()


def test_admin_manages_users_tokens_and_reads_audit(fleet: ConsoleFleet, page: Page) -> None:
    login(page, fleet.url, "vera", VIEWER_PASSWORD)  # a session for the admin to revoke
    page.get_by_role("button", name="Log out").click()
    page.context.clear_cookies()
    login(page, fleet.url, "vera", VIEWER_PASSWORD)
    page.context.clear_cookies()
    login(page, fleet.url, "admin", ADMIN_PASSWORD)
    page.goto(f"{fleet.url}/console/#/users")
    page.locator("form[aria-label='Create a user']").get_by_label("Username").fill("ines")
    page.get_by_label("Password", exact=True).last.fill("ines-password-1")
    page.get_by_role("button", name="Create user").click()
    role = page.get_by_label("Role of ines")
    expect(role).to_have_value("viewer")
    role.select_option("operator")
    expect(page.locator("#toast")).to_contain_text("ines is now operator")
    assert fleet.server.store.get_user("ines").role == "operator"

    token = fleet.server.store.list_api_tokens("vera")
    live = [t for t in token if t.revoked_at is None]
    assert live, "vera has a console session"
    page.get_by_role("button", name=f"Revoke token {live[0].id} of vera").click()
    expect(page.get_by_role("button", name=f"Revoke token {live[0].id} of vera")).to_have_count(0)
    assert fleet.server.store.find_api_token(live[0].token_hash).revoked_at is not None  # type: ignore[union-attr]
    shot(page, "users")

    page.goto(f"{fleet.url}/console/#/audit")
    expect(page.locator("td", has_text="patch_user").first).to_be_visible()
    expect(page.locator("td", has_text="logout").first).to_be_visible()
    shot(page, "audit")
    page.goto(f"{fleet.url}/console/#/rollouts")
    expect(page.locator("#rollout-list")).to_contain_text("No rollout yet")
    expect(page.locator("#create-rollout > summary")).to_have_text("New rollout")  # an admin


def test_training_run_page_draws_rounds(fleet: ConsoleFleet, page: Page) -> None:
    login(page, fleet.url, "vera", VIEWER_PASSWORD)
    page.locator("#nav").get_by_role("link", name="Training runs").click()
    page.get_by_role("link", name="run-7f3a").click()
    accuracy = page.locator("figure.chart", has_text="Accuracy").locator("path.line")
    expect(accuracy).to_have_attribute("data-points", "5")
    expect(page.locator(".panel", has_text="Rounds").locator("tbody tr")).to_have_count(5)
    expect(page.locator(".facts")).to_contain_text("digits@1.3.0 → 1.4.0")
    expect(page.get_by_role("button", name="Stop run")).to_have_count(0)  # a viewer, and done
    shot(page, "training")


def test_models_page_lists_registered_versions(fleet: ConsoleFleet, page: Page) -> None:
    package = Path(__file__).resolve().parent.parent / "models" / "dist"
    pushed = fleet.push_model(package / "digits-1.0.0-onnx-int8.efpkg")
    for other in ("digits-1.0.0-tflite-int8.efpkg", "digits-cnn-1.0.0-onnx-int8.efpkg"):
        fleet.push_model(package / other)
    login(page, fleet.url, "vera", VIEWER_PASSWORD)
    page.locator("#nav").get_by_role("link", name="Models & firmware").click()
    row = page.locator(".results tbody tr", has_text=str(pushed["target_path"]))
    expect(row).to_contain_text("1.0.0")
    expect(row).to_contain_text("onnx-int8")
    expect(row).to_contain_text("upload")
    expect(page.locator("button")).to_have_count(1)  # only "Log out": a viewer pushes nothing
    shot(page, "models")
    row.get_by_role("link", name="1.0.0").click()  # the version's model card
    expect(page.get_by_role("heading", name="Model card: digits 1.0.0")).to_be_visible()
    flavours = page.locator(".panel", has_text="Flavours").locator("tbody tr")
    expect(flavours).to_have_count(2)  # onnx-int8 and tflite-int8
    expect(page.locator(".panel", has_text="Edge")).to_contain_text("opset")
    md = page.get_by_role("link", name="Markdown").get_attribute("href")
    text = page.evaluate("async (u) => (await (await fetch(u)).text())", md)
    assert str(text).startswith("# Model card: digits 1.0.0")
    shot(page, "model-card")


def test_logout_ends_the_session(fleet: ConsoleFleet, page: Page) -> None:
    login(page, fleet.url, "admin", ADMIN_PASSWORD)
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in to the fleet console")).to_be_visible()
    status = page.evaluate("async () => (await fetch('/api/v1/console/session')).status")
    assert status == 401
    page.goto(f"{fleet.url}/console/#/devices")
    expect(page.get_by_label("Username")).to_be_visible()
