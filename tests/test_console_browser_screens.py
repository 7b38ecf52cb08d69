"""The web console's screens in a real headless Chromium against a real fleet:
live devices, the overview, charts, training runs, models; and what they say is true.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import console_browser_kit as kit
from .console_browser_kit import DASH, WAIT_MS, Page, expect, login, shot
from .console_fleet import OPERATOR_PASSWORD, VIEWER_PASSWORD, ConsoleFleet
from .harness import ADMIN_PASSWORD, wait_for

_chromium = kit._chromium  # skips the module without Debian's chromium
fleet = kit.fleet  # this module's own fleet, browser and a page per test
browser = kit.browser
page = kit.page


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
        str(40 + 3 + len(fleet.agent_ids) + len(fleet.learner_ids))
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
    # cam-01 sends chi-squared drift reports: its windows make the cohort table
    cohorts = page.locator("#cohorts")
    expect(cohorts.locator("caption", has_text="digits 1.3.0")).to_be_visible(timeout=WAIT_MS)
    expect(cohorts.locator("tbody tr")).not_to_have_count(0)
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
    sparse = drift.locator("path.line").first.get_attribute("d") or ""
    assert sparse.count("L") >= 1, sparse  # points joined across batches without drift
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

    page.goto(f"{fleet.url}/console/#/devices/cam-01")
    both = page.locator("figure.chart", has_text="baseline vs reference").locator("path.line")
    expect(both.first).to_have_attribute("data-series", "vs own baseline")
    expect(both).to_have_count(3)  # baseline, reference, alert

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


def test_training_run_page_draws_rounds(fleet: ConsoleFleet, page: Page) -> None:
    """The real run the fleet fixture made: its rounds, curve and candidate as stored."""
    run = fleet.server.store.get_training_run(fleet.training_run)  # type: ignore[attr-defined]
    login(page, fleet.url, "vera", VIEWER_PASSWORD)
    page.locator("#nav").get_by_role("link", name="Training runs").click()
    page.get_by_role("link", name=fleet.training_run).click()
    accuracy = page.locator("figure.chart", has_text="Accuracy").locator("path.line")
    expect(accuracy).to_have_attribute("data-points", "5")
    expect(page.locator(".panel", has_text="Rounds").locator("tbody tr")).to_have_count(5)
    expect(page.locator(".facts")).to_contain_text(
        f"{run.result['parent']} → {run.result['version']}"
    )
    expect(page.get_by_role("button", name="Stop run")).to_have_count(0)  # a viewer, and done
    shot(page, "training")


def test_operator_starts_a_training_run_from_the_form(fleet: ConsoleFleet, page: Page) -> None:
    """The strategies and defaults come from the server's schema; what the form sends is the
    run's spec (an incoherent one comes back as the server's 422)."""
    login(page, fleet.url, "otto", OPERATOR_PASSWORD)
    page.locator("#nav").get_by_role("link", name="Training runs").click()
    page.locator("#start-training > summary").click()
    strategy = page.get_by_label("Strategy")
    expect(strategy.locator("option:checked")).to_have_text("fedadam (default)")
    expect(strategy.locator("option")).to_contain_text(["fedavg", "fedyogi", "fedbuff"])
    expect(page.get_by_label("Buffer size")).to_have_value("5")
    strategy.select_option("fedbuff")
    page.get_by_label("Target").fill("tag:fl=nobody")
    page.get_by_label("Min clients").fill("4")
    page.get_by_label("Buffer size").fill("3")
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_role("alert")).to_contain_text("must not exceed")
    page.get_by_label("Min clients").fill("2")
    page.get_by_label("Start from version").fill("9.9.9")
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_role("alert")).to_contain_text("model 'digits' version 9.9.9")
    page.get_by_label("Start from version").fill("")
    page.get_by_role("button", name="Start training").click()
    expect(page.locator(".facts")).to_contain_text("fedbuff")
    spec = page.locator(".panel", has_text="Spec").locator("pre")
    expect(spec).to_contain_text('"buffer_size": 3')
    expect(spec).to_contain_text('"parent_version": "1.0.0"')  # what it started from
    expect(spec).to_contain_text('"strategy": "fedbuff"')
    page.get_by_role("button", name="Stop run").click()  # nobody is eligible: it would wait
    expect(page.locator(".facts")).to_contain_text("stopped")


def test_operator_asks_for_federated_evaluation_from_the_form(
    fleet: ConsoleFleet, page: Page
) -> None:
    login(page, fleet.url, "otto", OPERATOR_PASSWORD)
    page.locator("#nav").get_by_role("link", name="Training runs").click()
    page.locator("#start-training > summary").click()
    expect(page.get_by_label("Evaluate every")).to_have_value("1")
    expect(page.get_by_label("Judge candidate by").locator("option:checked")).to_have_text("auto")
    page.get_by_label("Strategy").select_option("fedavg")
    page.get_by_label("Target").fill("tag:fl=nobody")
    page.get_by_label("Evaluate every").fill("3")
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_role("alert")).to_contain_text("need client_evaluate")
    page.get_by_label("Federated evaluation").check()
    page.get_by_label("Cohort tag").fill("site")
    page.get_by_label("Judge candidate by").select_option("federated")
    page.get_by_role("button", name="Start training").click()
    spec = page.locator(".panel", has_text="Spec").locator("pre")
    expect(spec).to_contain_text('"evaluate_every": 3')
    expect(spec).to_contain_text('"evaluate_by": "site"')
    expect(spec).to_contain_text('"accept_by": "federated"')
    page.get_by_role("button", name="Stop run").click()
    expect(page.locator(".facts")).to_contain_text("stopped")


def test_models_page_lists_registered_versions(fleet: ConsoleFleet, page: Page) -> None:
    package = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models"
    pushed = fleet.push_model(package / "digits-1.0.0-onnx-int8.efpkg")
    for other in ("digits-1.0.0-tflite-int8.efpkg", "digits-cnn-1.0.0-onnx-int8.efpkg"):
        fleet.push_model(package / other)
    login(page, fleet.url, "vera", VIEWER_PASSWORD)
    page.locator("#nav").get_by_role("link", name="Models & firmware").click()
    row = page.locator(".results tbody tr", has_text=str(pushed["target_path"]))
    expect(row).to_contain_text("1.0.0")
    expect(row).to_contain_text("onnx-int8")
    expect(row).to_contain_text("upload")
    # Only "Log out" (the narrow-screen "Menu" button is hidden here): a viewer pushes nothing.
    expect(page.locator("button:visible")).to_have_count(1)
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


def test_model_page_shows_the_task_and_every_tensor(
    fleet: ConsoleFleet, page: Page, tmp_path: Path
) -> None:
    from fleet_server.modelkit.pack import pack

    from .thirdparty_kit import iforest_request

    _, packed = pack(iforest_request(tmp_path, output=tmp_path / "pump.efpkg"))
    pushed = fleet.push_model(packed)
    login(page, fleet.url, "vera", VIEWER_PASSWORD)
    page.locator("#nav").get_by_role("link", name="Models & firmware").click()
    row = page.locator(".results tbody tr", has_text=str(pushed["target_path"]))
    row.get_by_role("link", name="pump-anomaly").click()
    expect(page.locator("h1")).to_have_text("pump-anomaly 1.0.0")
    expect(page.locator("[data-task]")).to_have_text("anomaly")
    expect(page.locator("main")).to_contain_text("higher_is_anomalous: false")
    inputs = page.get_by_role("region", name="Inputs")
    expect(inputs).to_contain_text("float32[batch, 4]")
    expect(inputs).to_contain_text("features temperature_c, vibration_mm_s")
    outputs = page.get_by_role("region", name="Outputs")
    expect(outputs).to_contain_text("scores")
    expect(outputs).to_contain_text("label")
    shot(page, "model")


def _push_once(fleet: ConsoleFleet, name: str) -> dict[str, object]:
    """Register a shipped package, or find it registered by an earlier test."""
    import httpx

    path = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models" / name
    try:
        return fleet.push_model(path)
    except httpx.HTTPStatusError as exc:
        assert exc.response.status_code == 409, exc.response.text
    listed = httpx.get(
        f"{fleet.url}/api/v1/artifacts", headers=fleet.headers, params={"limit": 1000}
    ).json()["items"]
    import hashlib

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return next(a for a in listed if a["sha256"] == sha)


def test_screens_say_what_is_true(fleet: ConsoleFleet, page: Page) -> None:
    import time

    from edgefleet_contract.messages import ModelRef, ReportedState
    from fleet_server.store.training import RoundRecord

    store = fleet.server.store
    # A finished run whose accuracy moved 0.95 -> 0.97 and whose candidate lost to its parent.
    now = time.time()
    store.create_training_run(
        "run-close", {"model": "digits", "rounds": 3}, actor="otto", now=now - 300
    )
    for n, acc in enumerate((0.95, 0.96, 0.97), start=1):
        store.complete_round(
            RoundRecord(
                run_id="run-close",
                round=n,
                loss=0.2 - n / 100,
                accuracy=acc,
                participants=["cam-01", "cam-02"],
                failures={},
                rejected={},
                bytes_out=1,
                bytes_in=1,
                wall_s=0.1,
                ts=now - 300 + 30 * n,
            ),
            b"weights",
        )
    result = {
        "version": "1.5.0",
        "parent": "digits@1.4.0",
        "accuracy": 0.95,
        "baseline_accuracy": 0.96,
        "beats_parent": False,
        "handed_over": False,
    }
    store.set_training_status("run-close", "completed", now=now, result=result)

    login(page, fleet.url, "otto", OPERATOR_PASSWORD)  # an operator: may stop a live run
    page.goto(f"{fleet.url}/console/#/training")
    row = page.locator(".results tbody tr", has_text="run-close")
    expect(row).to_contain_text("1.5.0 not registered did not beat the parent (0.95 vs 0.96)")
    page.goto(f"{fleet.url}/console/#/training/run-close")
    chart = page.locator("figure.chart", has_text="Accuracy")
    expect(chart.locator("path.line")).to_have_attribute("data-points", "3")
    expect(page.get_by_role("button", name="Stop run")).to_be_hidden()  # the run is finished
    ticks = chart.locator("text.tick").all_text_contents()
    y_ticks = [float(t) for t in ticks if not t.startswith("round")]
    assert min(y_ticks) > 0.9 and max(y_ticks) < 0.99, y_ticks  # fitted, not a 0-1 axis
    assert len(set(y_ticks)) == len(y_ticks), y_ticks  # neighbouring ticks differ

    # One flavour of a version runs: only that package says so.
    onnx = _push_once(fleet, "digits-1.0.0-onnx-int8.efpkg")
    _push_once(fleet, "digits-1.0.0-tflite-int8.efpkg")
    before = store.get_device("cam-01")
    store.set_reported(
        "cam-01",
        ReportedState(
            device_id="cam-01",
            ts=now,
            agent_version="0.1.0",
            health="ok",
            model=ModelRef(
                name="digits", version="1.0.0", sha256=str(onnx["sha256"]), runtime="onnx"
            ),
        ),
        now,
    )
    try:
        page.goto(f"{fleet.url}/console/#/artifacts")
        rows = page.locator(".results tbody tr")
        onnx_row = rows.filter(has_text="models/digits/1.0.0/digits-1.0.0-onnx-int8")
        expect(onnx_row).to_contain_text("1 device (")
        tflite_row = rows.filter(has_text="models/digits/1.0.0/digits-1.0.0-tflite-int8")
        expect(tflite_row).to_contain_text("no device")
    finally:
        if before.reported is not None:
            store.set_reported("cam-01", before.reported, now)

    # A device's refusal of its desired state is on its page, not only in the commands.
    from edgefleet_contract.messages import DesiredState
    from fleet_server.store.base import CommandRecord

    version = store.next_desired_version("sensor-0001")
    store.set_desired("sensor-0001", DesiredState(version=version))
    store.add_command(
        CommandRecord(
            id="c-refused",
            device_id="sensor-0001",
            name="set_desired",
            args={"version": version},
            created_at=now,
            actor="otto",
        )
    )
    store.ack_command(
        "c-refused",
        device_id="sensor-0001",
        status="failed",
        detail="storage is read-only",
        ts=now,
    )
    page.goto(f"{fleet.url}/console/#/devices/sensor-0001")
    expect(page.locator("#twin-refusal")).to_have_text(
        f"The device refused desired version {version}: failed: storage is read-only"
    )

    # Overview: the minute in progress is left out, so no line ends in a drop to zero;
    # the distribution figures say what they count.
    page.goto(f"{fleet.url}/console/#/overview")
    expect(page.locator(".panel", has_text="complete minutes")).to_be_visible()
    by_model = page.locator(".panel", has_text="By model version")
    expect(by_model.locator(".bars-key")).to_have_text("online / devices")
    expect(by_model.locator(".bar-value").first).to_have_attribute(
        "title", re.compile(r"^\d+ of \d+ devices online$")
    )
