"""``fleet-server demo``: the whole loop on one machine, step by step.

Server (SQLite, managed mosquitto) → real ``edge-agent`` processes serving
the factory model → apps predict and label through each agent's local API →
telemetry, then a drift alert when part of the traffic shifts → a federated
run over the devices → the better candidate registered and signed → a canary
and waves behind gates → every device committed on the new version → summary.
Ctrl-C at any point stops agents, server and broker; a second run reuses the
data dir (see :mod:`.fleet` for why the devices start over each time).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from edgefleet_common import logs
from edgefleet_contract.errors import EdgefleetError
from fleet_server.config import ApiSettings, BrokerSettings, ServerSettings
from fleet_server.server import FleetServer, initialize

from . import driver, report, steps
from .data import FACTORY_VERSION, MODEL, DeviceData, device_data, factory_packages
from .fleet import Agent, stop_all
from .ui import Api, Interrupted, console, progress, step, wait

DEMO_PASSWORD = "edgefleet-demo"


@dataclass(frozen=True)
class Options:
    devices: int = 5
    rounds: int = 8
    probation: str = "20s"
    label_share: float = 0.6
    exit_when_done: bool = False
    duration: float = 0.0

    @classmethod
    def quick(cls, devices: int, **kw: object) -> Options:
        # Five rounds, not three: three rounds over three devices ended within a point of
        # the factory model and, now and then, below it (nothing to roll out).
        return cls(devices=devices, rounds=5, probation="3s", **kw)  # type: ignore[arg-type]


def _prepare(data_dir: Path, settings: ServerSettings) -> tuple[dict[str, Path], FleetServer]:
    """The factory packages, and an initialized server whose runs start from the float one."""
    factory = factory_packages(data_dir / "factory")
    models = settings.data_dir / "models"  # where federated runs find their start package
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(factory["onnx-float32"], models / factory["onnx-float32"].name)
    initialize(settings, admin_password=DEMO_PASSWORD)
    return factory, FleetServer(settings)


def _train_and_sign(
    api: Api, agents: list[Agent], options: Options, stop: threading.Event
) -> tuple[dict[str, Any], str]:
    """A federated run whose candidate beats the factory model, registered and signed."""
    step(f"federated training: {options.rounds} rounds over {len(agents)} devices")
    run = steps.train(api, agents, rounds=options.rounds, stop=stop)
    result = run["result"]
    if not result.get("handed_over"):
        raise EdgefleetError(
            f"the candidate scored {result.get('accuracy', 0):.3f} on the held-out set, "
            f"not better than {result.get('baseline_accuracy', 0):.3f}: nothing to roll out"
        )
    version = str(result["version"])
    step(f"candidate {MODEL} {version} registered and signed")
    int8 = steps.artifact(api, version)
    signed = steps.signed_target(api, int8["target_path"])
    if signed is None or signed["hashes"]["sha256"] != int8["sha256"]:
        raise EdgefleetError(f"{int8['target_path']} is not a signed TUF target")
    console.print(
        f"  TUF target {int8['target_path']} sha256 {int8['sha256'][:16]}… "
        f"lineage: run {int8['lineage'].get('run_id', '?')[:8]}, "
        f"parent {int8['lineage'].get('parent')}"
    )
    return run, version


def _linger(settings: ServerSettings, options: Options, stop: threading.Event) -> None:
    """Say where to look, then keep the fleet up as long as the options ask."""
    console.print(f"\nconsole: {settings.api_url}/console/   login: admin / {DEMO_PASSWORD}")
    console.print(f"API docs: {settings.api_url}/api/docs")
    console.print(f"fleetctl: FLEETCTL_SERVER={settings.api_url} fleetctl login -u admin")
    if options.duration > 0:
        stop.wait(options.duration)
    elif not options.exit_when_done:
        console.print("running; Ctrl-C stops everything")
        stop.wait()


def run_demo(data_dir: Path, options: Options) -> int:
    """Run the loop; returns the process exit code (130 when interrupted)."""
    logs.configure("WARNING", "text")
    _quiet_flower()
    settings = ServerSettings(
        data_dir=data_dir / "server",
        api=ApiSettings(port=int(os.environ.get("DEMO_API_PORT", "8080"))),
        broker=BrokerSettings(port=int(os.environ.get("DEMO_BROKER_PORT", "8883"))),
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started, wall_start = time.monotonic(), time.time()
    step("factory model and fleet server")
    factory, server = _prepare(data_dir, settings)
    agents = [
        Agent(f"demo-{i:03d}", data_dir / "agents" / f"demo-{i:03d}")
        for i in range(options.devices)
    ]
    background = threading.Event()
    feeder: threading.Thread | None = None
    server.start()
    try:
        api = Api(settings.api_url, DEMO_PASSWORD)
        steps.settle_leftovers(api)
        for package in factory.values():
            steps.push(api, package.read_bytes())
        console.print(
            f"  server {settings.api_url}, broker :{settings.broker.port}; "
            f"factory model {MODEL} {FACTORY_VERSION} (int8) registered and signed"
        )
        factory_target = steps.artifact(api, FACTORY_VERSION)["target_path"]
        _enroll(api, agents, factory["onnx-int8"], factory_target, options, stop)
        addresses = [a.address() for a in agents]
        field = device_data(len(agents))
        counts = _serve(addresses, field, options, stop)
        feeder = threading.Thread(target=_trickle, args=(addresses, field, background), daemon=True)
        feeder.start()
        shifted = _drift(api, agents, addresses, field, wall_start, stop)
        run, version = _train_and_sign(api, agents, options, stop)
        step("rollout: canary, then waves, behind gates")
        rollout = steps.roll_out(api, agents, version, probation=options.probation, stop=stop)
        summary = report.collect(
            api,
            agents,
            run=run,
            rollout=rollout,
            version=version,
            started=started,
            wall_clock_start=wall_start,
            counts=counts,
            shifted=shifted,
        )
        step("summary")
        report.show(summary, data_dir / "summary.json")
        _linger(settings, options, stop)
        return 0
    except Interrupted:
        return 130
    finally:
        background.set()
        if feeder is not None:
            feeder.join(10)
        stop_all(agents)
        server.stop()
        console.print("stopped: agents, server and broker")


def _enroll(
    api: Api,
    agents: list[Agent],
    model: Path,
    target: str,
    options: Options,
    stop: threading.Event,
) -> None:
    step(f"{len(agents)} devices: real edge-agent processes, own keys, mTLS")
    with progress() as bar:
        task = bar.add_task("enrolling devices", total=len(agents))
        for agent in agents:
            if stop.is_set():
                raise Interrupted
            agent.enroll(api, {"site": "demo"})
            # A device known from an earlier run still wants that run's model: every run
            # starts the fleet on the factory model (the agent boots with it, so no update).
            model_ref = {"name": MODEL, "version": FACTORY_VERSION, "target": target}
            api.call("PUT", f"/devices/{agent.id}/twin/desired", json={"model": model_ref})
            agent.start(model, probation_s=_seconds(options.probation))
            bar.advance(task)
        task = bar.add_task(f"serving {MODEL} {FACTORY_VERSION}", total=len(agents))
        on_factory = lambda: sum(steps.serving(api, a.id, FACTORY_VERSION) for a in agents)  # noqa: E731
        wait(bar, task, on_factory, stop)


def _serve(
    addresses: list[str], field: list[DeviceData], options: Options, stop: threading.Event
) -> dict[str, int]:
    step("apps ask for predictions and label some of them (non-IID data per device)")
    counts = driver.Counts()
    total = sum(len(d.y) for d in field)
    with progress() as bar, ThreadPoolExecutor(len(addresses)) as pool:
        task = bar.add_task("predictions served", total=total)
        jobs = [
            pool.submit(
                driver.serve_and_label,
                address,
                data,
                label_share=options.label_share,
                counts=counts,
                stop=stop,
                seed=i,
            )
            for i, (address, data) in enumerate(zip(addresses, field, strict=True))
        ]
        wait(bar, task, lambda: counts.predictions if not stop.is_set() else 0, stop)
        for job in jobs:
            job.result()
    console.print(
        f"  {counts.feedback} labelled samples on the devices; the factory model was right "
        f"on {counts.correct / max(1, counts.feedback):.0%} of them"
    )
    return {"predictions": counts.predictions, "labelled": counts.feedback}


def _drift(
    api: Api,
    agents: list[Agent],
    addresses: list[str],
    field: list[DeviceData],
    since: float,
    stop: threading.Event,
) -> list[str]:
    """Shift half the fleet's inputs until each of those devices alerts; their ids."""
    step("telemetry, then a camera shift on part of the fleet")
    with progress() as bar:
        task = bar.add_task("labelled samples reported", total=len(agents))
        wait(bar, task, lambda: sum(steps.labelled(api, a.id, since) > 0 for a in agents), stop)
        # Non-IID devices differ from the package's reference from the start; what alerts
        # is a change from each device's own normal, learned in its burn-in.
        task = bar.add_task("device baselines learned (burn-in)", total=len(agents))
        wait(bar, task, lambda: sum(steps.baseline_ready(api, a.id, since) for a in agents), stop)
    shifted = agents[: max(1, len(agents) // 2)]
    shift_at = time.time()
    halt = threading.Event()
    threads = [
        threading.Thread(
            target=driver.shifted_traffic,
            args=(addresses[i], field[i]),
            kwargs={"rows_per_s": 600, "stop": halt, "seed": 100 + i},
            daemon=True,
        )
        for i in range(len(shifted))
    ]
    for t in threads:
        t.start()
    after: dict[str, dict[str, Any]] = {}

    def alerts() -> int:
        after.update({a.id: steps.latest_drift(api, a.id, shift_at) for a in agents})
        return sum(bool(after[a.id].get("alert")) for a in shifted)

    try:
        with progress() as bar:
            task = bar.add_task("drift alerts (vs own baseline)", total=len(shifted))
            wait(bar, task, alerts, stop)
    finally:
        halt.set()
        for t in threads:
            t.join(10)
    table = Table(title="input drift after the shift, read back from the server")
    for col in ("device", "inputs", "vs package reference", "vs own baseline", "alert"):
        table.add_column(col)
    for a in agents:
        d = after.get(a.id) or {}
        table.add_row(
            a.id,
            "[yellow]brighter + noisy[/]" if a in shifted else "unchanged",
            _test(d.get("reference")),
            _test(d.get("baseline")),
            "[bold red]ALERT[/]" if d.get("alert") else "none",
        )
    console.print(table)
    console.print(
        "  JS: Jensen-Shannon distance (0 same, 1 disjoint); p: chi-squared, Benjamini-Hochberg "
        "across the 64 pixels.  Every device differs from the reference; only the shifted "
        "ones changed from their own normal."
    )
    return [a.id for a in shifted]


def _trickle(addresses: list[str], field: list[DeviceData], halt: threading.Event) -> None:
    """Light ordinary traffic for the rest of the demo, every answer labelled, so the rollout
    gates measure health and the champion/challenger gate compares the new version with the
    one it replaces on labels (it asks the canary for a few hundred)."""
    import json

    import numpy as np

    from agent import localclient

    rng = np.random.default_rng(5)
    while not halt.wait(0.5):
        for address, data in zip(addresses, field, strict=True):
            pick = rng.integers(0, len(data.y), size=8)
            # The agent may be switching models or shutting down; the next tick retries.
            with contextlib.suppress(OSError):
                status, doc = localclient.predict(address, data.x[pick], timeout=5)
                answers = doc.get("predictions", []) if status == 200 else []
                for answer, label in zip(answers, data.y[pick], strict=False):
                    body = json.dumps({"prediction_id": answer["id"], "label": int(label)})
                    localclient.request(address, "POST", "/v1/feedback", body.encode(), timeout=5)


def _quiet_flower() -> None:
    """Flower logs every round at INFO on its own handler; the demo shows rounds itself."""
    import logging

    with contextlib.suppress(ImportError):
        import flwr.common.logger  # noqa: F401  (sets its level at import; import it first)
    logging.getLogger("flwr").setLevel(logging.ERROR)


def _seconds(duration: str) -> float:
    from fleet_server.rollouts.plan import parse_duration

    return parse_duration(duration, what="--probation")


def _test(test: dict[str, Any] | None) -> str:
    if not test:
        return "not tested yet"
    return f"JS {test['effect']:.2f}, p {test['p_value']:.1e}"
