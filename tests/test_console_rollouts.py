"""Rollouts in the web console: a real Chromium against a real server, broker and registry.

The devices are :class:`tests.rollout_devices.SimDevice` links that answer
``set_desired`` with update reports and telemetry, so a rollout started from
the form really walks its waves, gates and device outcomes to ``completed``.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from edgefleet_contract.messages import InferenceStats, Telemetry
from fleet_server.auth import hash_password

from . import console_browser_kit as console_browser
from .console_browser_kit import Page, expect, login, shot
from .console_fleet import OPERATOR_PASSWORD, VIEWER_PASSWORD
from .harness import wait_for
from .rollout_devices import RolloutFleet as Fleet
from .rollout_devices import SimDevice, rollout_fleet

browser = console_browser.browser  # the same Chromium fixtures as the other console tests
page = console_browser.page

DEVICES = 4
RolloutFleet = Fleet[SimDevice]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutFleet]:
    tmp = tmp_path_factory.mktemp("console-rollouts")
    with rollout_fleet(tmp, "cr", DEVICES, SimDevice) as running:
        for name, role, password in (
            ("vera", "viewer", VIEWER_PASSWORD),
            ("otto", "operator", OPERATOR_PASSWORD),
        ):
            running.server.store.create_user(
                name, role=role, password_hash=hash_password(password), now=time.time()
            )
        running.wait_running("1.0.0")
        yield running


def spec(fleet: RolloutFleet, version: str) -> str:
    """The form's value for digits@version, as listed by the registry's API."""
    items = fleet.api.get("/artifacts?kind=model&limit=100")["items"]
    a = next(x for x in items if x["name"] == "digits" and x["version"] == version)
    return f"digits@{version}:{a['flavor']}" if a["flavor"] else f"digits@{version}"


def test_operator_starts_a_rollout_in_the_form_and_watches_it_complete(
    fleet: RolloutFleet, page: Page
) -> None:
    login(page, fleet.url, "otto", OPERATOR_PASSWORD)
    page.goto(f"{fleet.url}/console/#/rollouts")
    expect(page.locator("#rollout-list")).to_contain_text("No rollout yet")
    page.locator("#create-rollout > summary").click()
    page.get_by_label("Artifact").select_option(spec(fleet, "2.0.0"))
    page.get_by_label("Target selector").fill("tag:site=e2e")
    page.get_by_label("Waves").fill("50%,1oo%")  # a typo: the server's 422 is shown
    page.get_by_label("Pace").fill("600/min")
    page.get_by_label("Probation").fill("2s")
    page.get_by_label("Gates").fill("error_rate<0.05\np95_latency_ms<40\ninstall_success_rate>=1")
    page.get_by_role("button", name="Start rollout").click()
    alert = page.locator("#create-rollout [role=alert]")
    expect(alert).to_contain_text("The plan was refused (422)")
    expect(alert).to_contain_text("waves")
    shot(page, "rollout-create")
    assert fleet.api.get("/rollouts")["items"] == []  # nothing was created

    page.get_by_label("Waves").fill("50%,100%")
    page.get_by_label("Waves").press("Enter")  # the keyboard submits the form
    expect(page).to_have_url(re.compile(r"#/rollouts/[^/]+$"))
    expect(page.locator(".rollout-summary")).to_contain_text("completed", timeout=120_000)
    waves = page.locator(".wave")
    expect(waves).to_have_count(3)
    for i, size in enumerate((1, 1, 2)):
        expect(waves.nth(i)).to_have_attribute("data-state", "passed")
        expect(waves.nth(i).locator(".bar-value")).to_have_text(f"{size}/{size} updated")
        # The plan's three, and the parent gate (these devices send no labels: nothing to
        # compare, which it passes and says).
        expect(waves.nth(i).locator(".gates li.pass")).to_have_count(4)
    expect(waves.nth(0).locator(".gates")).to_contain_text("error_rate 0 < 0.05")
    outcomes = page.locator("table.grid").first.locator("tbody tr")
    expect(outcomes).to_have_count(DEVICES)
    expect(outcomes.filter(has_text="succeeded")).to_have_count(DEVICES)
    expect(page.locator(".rollout-summary .actions button")).to_have_text(["Roll back"])
    assert all(d.version == "2.0.0" for d in fleet.devices)
    shot(page, "rollout-detail")

    page.get_by_role("link", name="Rollouts", exact=True).first.click()
    row = page.locator("#rollout-list tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("digits@2.0.0")
    expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", str(DEVICES))
    shot(page, "rollouts")


@contextlib.contextmanager
def viewing_rollout(fleet: RolloutFleet, page: Page, body: dict[str, Any]) -> Iterator[str]:
    """``body`` started as a rollout and its page open in the viewer's console; the
    rollout is aborted after the test, so the module's later tests start from a quiet fleet."""
    rid: str = fleet.api.post("/rollouts", body)["id"]
    try:
        login(page, fleet.url, "vera", VIEWER_PASSWORD)
        page.goto(f"{fleet.url}/console/#/rollouts/{rid}")
        yield rid
    finally:
        fleet.api.post(f"/rollouts/{rid}/abort")


def slow_rollout(fleet: RolloutFleet) -> str:
    """A rollout that stays in its canary wave (one device per hour, long probation)."""
    body = {
        "artifact": "digits@3.0.0",
        "target": "tag:site=e2e",
        "pace": "1/h",
        "canary": "1",
        "probation": "1h",
        "gates": [],
    }
    rid: str = fleet.api.post("/rollouts", body)["id"]
    return rid


def test_pause_and_resume_buttons_and_the_overview_card(fleet: RolloutFleet, page: Page) -> None:
    rid = slow_rollout(fleet)
    try:
        login(page, fleet.url, "otto", OPERATOR_PASSWORD)
        card = page.locator("#active-rollouts")
        expect(card).to_contain_text(rid)
        expect(card).to_contain_text("digits@3.0.0")
        expect(card.get_by_role("progressbar")).to_have_count(1)

        page.goto(f"{fleet.url}/console/#/rollouts/{rid}")
        summary = page.locator(".rollout-summary")
        page.get_by_role("button", name="Pause").click()
        expect(summary.locator(".badge").first).to_have_text("paused")
        assert fleet.api.get(f"/rollouts/{rid}")["status"] == "paused"
        expect(page.get_by_role("button", name="Pause")).to_have_count(0)
        page.get_by_role("button", name="Resume").focus()
        page.keyboard.press("Enter")
        expect(summary.locator(".badge").first).not_to_have_text("paused")
        wait_for(lambda: fleet.api.get(f"/rollouts/{rid}")["status"] == "canary", 30, "resumed")
    finally:
        fleet.api.post(f"/rollouts/{rid}/abort")


def test_a_wave_without_labelled_answers_waits_for_data(fleet: RolloutFleet, page: Page) -> None:
    """The devices serve (error_rate has data) but no app labels anything: accuracy waits."""
    on_v1 = all(d.version == "1.0.0" for d in fleet.devices)
    body = {
        "artifact": spec(fleet, "2.0.0" if on_v1 else "1.0.0"),
        "target": "tag:site=e2e",
        "pace": "600/min",
        "probation": "1s",
        "gates": ["accuracy>=0.9", "error_rate<0.05"],
        "gate_min_samples": 20,
        "gate_timeout": "1h",
    }
    with viewing_rollout(fleet, page, body) as rid:
        waiting = page.locator(".wave p.waiting")
        expect(waiting).to_contain_text(
            "waiting for data: accuracy>=0.9 0/20 labelled answers", timeout=60_000
        )
        expect(waiting).to_contain_text("without it the gates fail at")
        expect(page.locator(".wave .gates li.waiting")).to_contain_text("(0/20 labelled answers)")
        expect(page.locator(".wave .gates li.waiting")).to_contain_text("waiting for data")
        expect(page.locator(".wave .gates li.pass").first).to_contain_text("error_rate")
        page.locator(".rollout-summary summary").click()
        expect(page.locator(".facts")).to_contain_text("20 observations from the wave")
        shot(page, "rollout-waiting-for-data")
        got = fleet.api.get(f"/rollouts/{rid}")
        assert got["status"] in ("canary", "wave") and got["phase"] == "gating"
        assert got["waiting"].startswith("waiting for data: accuracy>=0.9")


def test_a_shadow_step_shows_above_the_waves_and_waits_for_shadow_answers(
    fleet: RolloutFleet, page: Page
) -> None:
    """These devices run no shadow model, so the step's gate waits; nothing is sent."""
    on_v1 = all(d.version == "1.0.0" for d in fleet.devices)
    body = {
        "artifact": spec(fleet, "2.0.0" if on_v1 else "1.0.0"),
        "target": "tag:site=e2e",
        "shadow": "1s",
        "gates": ["shadow_agreement>=0.9", "error_rate<0.05"],
        "gate_timeout": "1h",
    }
    with viewing_rollout(fleet, page, body) as rid:
        row = page.locator('.wave[data-wave="shadow"]')
        expect(row).to_contain_text("shadowing", timeout=60_000)
        expect(row.locator("p.waiting")).to_contain_text(
            "waiting for data: shadow_agreement>=0.9 0/20 shadow answers", timeout=60_000
        )
        expect(row.locator(".gates li.waiting")).to_contain_text("shadow_agreement")
        # The canary's own row does not repeat the shadow step's wait.
        expect(page.locator('.wave[data-wave="0"] p.waiting')).to_have_count(0)
        page.locator(".rollout-summary summary").click()
        expect(page.locator(".facts")).to_contain_text("beside the active model")
        shot(page, "rollout-shadow-step")
        got = fleet.api.get(f"/rollouts/{rid}")
        assert got["phase"] == "shadowing" and got["shadow"]["state"] == "shadowing"
        assert got["succeeded"] == 0
        assert all(d["sent_at"] is None for d in got["devices_detail"])


def test_viewer_sees_no_rollout_buttons_and_a_forced_post_is_refused(
    fleet: RolloutFleet, page: Page
) -> None:
    rid = slow_rollout(fleet)
    try:
        login(page, fleet.url, "vera", VIEWER_PASSWORD)
        page.goto(f"{fleet.url}/console/#/rollouts")
        expect(page.locator("#rollout-list")).to_contain_text(rid)
        expect(page.locator("#create-rollout")).to_have_count(0)
        page.goto(f"{fleet.url}/console/#/rollouts/{rid}")
        expect(page.locator(".rollout-summary")).to_contain_text("digits@3.0.0")
        expect(page.locator(".wave")).not_to_have_count(0)
        expect(page.locator(".rollout-summary")).to_contain_text("started")
        expect(page.get_by_role("group", name="Rollout actions")).to_have_count(0)
        for verb in ("Pause", "Resume", "Abort", "Roll back"):
            expect(page.get_by_role("button", name=verb)).to_have_count(0)
        status = page.evaluate(
            """async (rid) => {
              const me = await (await fetch('/api/v1/console/session')).json();
              const r = await fetch(`/api/v1/rollouts/${rid}/pause`, {
                method: 'POST', headers: { 'X-CSRF-Token': me.csrf_token } });
              return r.status;
            }""",
            rid,
        )
        assert status == 403
        assert fleet.api.get(f"/rollouts/{rid}")["status"] not in ("paused",)
        denied = httpx.post(f"{fleet.url}/api/v1/rollouts/{rid}/abort", timeout=30)
        assert denied.status_code == 401
    finally:
        fleet.api.post(f"/rollouts/{rid}/abort")


def test_models_page_shows_the_registry_artifacts(fleet: RolloutFleet, page: Page) -> None:
    login(page, fleet.url, "vera", VIEWER_PASSWORD)
    page.goto(f"{fleet.url}/console/#/artifacts?kind=model")
    rows = page.locator(".results tbody tr")
    expect(rows).to_have_count(3)
    v2 = rows.filter(has_text="2.0.0")
    expect(v2).to_contain_text(re.compile(r"\d+ devices? \("))  # where it runs (fleet summary)
    expect(v2).to_contain_text("models/digits/2.0.0/")  # its TUF target path
    expect(rows.filter(has_text="in targets")).to_have_count(3)  # all in the signed metadata
    v1 = fleet.api.get("/artifacts?kind=model&limit=100")["items"][-1]
    assert v1["version"] == "1.0.0"
    fleet.server.tuf.add_target(v1["target_path"], length=v1["size"], sha256="0" * 64, custom={})
    expect(rows.filter(has_text="1.0.0")).to_contain_text("not signed")  # on the next refresh


def test_the_parent_gate_shows_how_many_more_labels_it_needs(
    fleet: RolloutFleet, page: Page
) -> None:
    """The parent has labels (from before the rollout), the new version none yet: the
    champion/challenger gate waits, and the console says how many more it needs."""
    versions = [d.version for d in fleet.devices]  # earlier tests may leave a canary behind
    # The server's rule for the parent: what most devices run, a tie to the lowest label
    # (four devices split two and two after the earlier tests).
    current = min(set(versions), key=lambda v: (-versions.count(v), v))
    on_parent = [d for d in fleet.devices if d.version == current]
    now = time.time()
    fleet.server.store.insert_telemetry(
        [
            Telemetry(
                device_id=d.id,
                batch_id=f"labels-{d.id}-{now}",
                seq=1,
                ts=now - 60,
                window_s=60,
                inference=InferenceStats(
                    model="digits",
                    version=d.version,
                    count=1000,
                    errors=0,
                    throughput_per_s=1,
                    feedback_count=1000,
                    feedback_correct=950,
                ),
            )
            for d in fleet.devices
        ],
        received_at=now,
    )
    body = {
        "artifact": spec(fleet, "2.0.0" if current == "1.0.0" else "1.0.0"),
        "target": "tag:site=e2e",
        "pace": "600/min",
        "probation": "1s",
        "gates": ["error_rate<0.05"],
        "gate_timeout": "1h",
    }
    with viewing_rollout(fleet, page, body) as rid:
        gate = page.locator(".wave .gates li.waiting")
        expect(gate).to_contain_text("accuracy_vs_parent", timeout=60_000)
        expect(gate.locator(".needs")).to_have_text(re.compile(r" needs \d+ more labels"))
        expect(page.locator(".wave p.waiting")).to_contain_text(f"accuracy vs digits@{current}")
        page.locator(".rollout-summary summary").click()
        expect(page.locator(".facts")).to_contain_text("no worse by 5 points at 95%")
        shot(page, "rollout-parent-gate")

        def parent_gate() -> dict[str, Any] | None:
            waves = fleet.api.get(f"/rollouts/{rid}")["waves"]  # a skipped canary: wave 1
            gates = [g for w in waves for g in (w["gates"] or [])]
            return next((g for g in gates if g["metric"] == "accuracy_vs_parent"), None)

        wait_for(lambda: parent_gate() is not None, 30, "the parent gate in the API's answer")
        parent = parent_gate()
        assert parent is not None and parent["waiting"] and parent["needed"] > 100, parent
        assert parent["parent_samples"] == 1000 * len(on_parent)
