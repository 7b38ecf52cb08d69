"""Who may do what in the web console, in a real headless Chromium against a real
fleet: roles, CSRF, the keyboard alone, users and tokens, the audit log, logout.
"""

from __future__ import annotations

from . import console_browser_kit as kit
from .console_browser_kit import Page, expect, login, shot
from .console_fleet import OPERATOR_PASSWORD, VIEWER_PASSWORD, ConsoleFleet
from .harness import ADMIN_PASSWORD

_chromium = kit._chromium  # skips the module without Debian's chromium
fleet = kit.fleet  # this module's own fleet, browser and a page per test
browser = kit.browser
page = kit.page


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
    expect(page.locator("button:visible")).to_have_count(1)  # only "Log out"
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
    # Filter by object and time: only what was done to ines, with the object named.
    page.get_by_label("Object").fill("user:ines")
    page.get_by_label("When").select_option("3600")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator(".results tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("patch_user")
    expect(rows.nth(1)).to_contain_text("create_user")
    expect(rows.locator("code", has_text="user:ines")).to_have_count(2)
    assert "object=user%3Aines" in page.url and "within=3600" in page.url  # a shareable link
    page.goto(f"{fleet.url}/console/#/rollouts")
    expect(page.locator("#rollout-list")).to_contain_text("No rollout yet")
    expect(page.locator("#create-rollout > summary")).to_have_text("New rollout")  # an admin


def test_logout_ends_the_session(fleet: ConsoleFleet, page: Page) -> None:
    login(page, fleet.url, "admin", ADMIN_PASSWORD)
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in to the fleet console")).to_be_visible()
    status = page.evaluate("async () => (await fetch('/api/v1/console/session')).status")
    assert status == 401
    page.goto(f"{fleet.url}/console/#/devices")
    expect(page.get_by_label("Username")).to_be_visible()
