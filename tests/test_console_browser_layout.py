"""The web console's layout at phone and laptop widths, in a real headless Chromium
against a real fleet.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import console_browser_kit as kit
from .console_browser_kit import WAIT_MS, Page, expect, login, shot
from .console_fleet import ConsoleFleet
from .harness import ADMIN_PASSWORD

_chromium = kit._chromium  # skips the module without Debian's chromium
fleet = kit.fleet  # this module's own fleet and browser
browser = kit.browser


NARROW = {"width": 390, "height": 844}
LAPTOP = {"width": 1366, "height": 768}

NO_PAGE_SCROLL = "() => document.documentElement.scrollWidth <= window.innerWidth + 1"
OVERLAPS = """(selector) => {
  const boxes = [...document.querySelectorAll(selector)].map((e) => e.getBoundingClientRect());
  let n = 0;
  boxes.forEach((a, i) => boxes.slice(i + 1).forEach((b) => {
    const apart = a.right - 1 <= b.left || b.right - 1 <= a.left
      || a.bottom - 1 <= b.top || b.bottom - 1 <= a.top;
    if (!apart) n += 1;
  }));
  return n;
}"""
SPILLS = """() => {
  const out = (e) => e.getBoundingClientRect().right > window.innerWidth + 1;
  const cards = [...document.querySelectorAll(
    '.panel, .results, .kpi, .chart, .wave, .search, .facts')];
  // A table may be wider than the screen, but only inside a card that scrolls it.
  const tables = [...document.querySelectorAll('table.grid')].map((t) => {
    const box = t.closest('.results, .panel');
    return !box || getComputedStyle(box).overflowX === 'visible' ? t : box;
  });
  return [...cards, ...tables].filter(out).map((e) => e.className || e.tagName);
}"""


@pytest.fixture(params=[NARROW, LAPTOP], ids=["390x844", "1366x768"])
def sized(browser: object, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport=request.param)  # type: ignore[attr-defined]
    p = context.new_page()
    p.set_default_timeout(WAIT_MS)
    try:
        yield p
    finally:
        context.close()


def test_every_screen_fits_phone_and_laptop_widths(fleet: ConsoleFleet, sized: Page) -> None:
    page = sized
    narrow = page.viewport_size == NARROW
    fleet.start_agents()
    login(page, fleet.url, "admin", ADMIN_PASSWORD)
    toggle = page.get_by_role("button", name="Menu")
    if narrow:  # the sidebar is folded into a menu
        expect(page.locator("#nav")).to_be_hidden()
        toggle.click()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        page.locator("#nav").get_by_role("link", name="Devices").click()
        expect(page.locator("#nav")).to_be_hidden()  # choosing a section closes it
        expect(page.locator("#device-count")).to_be_visible()
    else:
        expect(toggle).to_be_hidden()
        expect(page.locator("#nav")).to_be_visible()
    size = "narrow" if narrow else "laptop"
    screens = [
        ("overview", ".kpi"),
        ("devices", ".results"),
        (f"devices/{fleet.agent_ids[0]}", "figure.chart"),
        ("devices/cam-03", ".panel"),
        (f"training/{fleet.training_run}", "figure.chart"),
        ("artifacts", ".results"),
        ("users", ".panel"),
        ("audit", "table.grid"),
    ]
    for route, ready in screens:
        page.goto(f"{fleet.url}/console/#/{route}")
        expect(page.locator(ready).first).to_be_visible()
        page.wait_for_timeout(200)  # the page's first refresh lays out
        assert page.evaluate(NO_PAGE_SCROLL), f"{route}: the page scrolls sideways at {size}"
        assert page.evaluate(SPILLS) == [], f"{route}: cards or tables spill out at {size}"
        assert page.evaluate(OVERLAPS, ".kpi") == 0, f"{route}: cards overlap at {size}"
        assert page.evaluate(OVERLAPS, "figure.chart") == 0, f"{route}: charts overlap"
        names = {"overview": "overview", "devices": "devices"}
        names[f"devices/{fleet.agent_ids[0]}"] = "device"
        if route in names:
            shot(page, f"{size}-{names[route]}")
