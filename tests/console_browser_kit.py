"""What the web console's browser tests share: Debian's Chromium driven by Playwright,
one real fleet per test module, a page per test, screenshots and the login.

Real server (managed mosquitto with mTLS, SQLite), real ``edge-agent``
processes and devices on the agent's own MQTT link.  Screenshots of the main pages
go to ``$SCREENSHOTS_DIR`` when set (``make screenshots`` points it at
docs/screenshots).  A test module takes the fixtures by name (``fleet = kit.fleet``);
a module-scoped one is then that module's own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright import sync_api

from .console_fleet import ConsoleFleet
from .harness import require

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(autouse=True, scope="module")
def _chromium() -> None:
    require(Path(CHROMIUM).exists(), f"Debian's chromium ({CHROMIUM})", "run .ci/setup-system")


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
        f.training_run = f.run_training()
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
    expect(page.get_by_role("heading", name="Log in to the fleet console")).to_have_count(0)
