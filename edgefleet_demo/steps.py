"""The demo's steps against the REST API: each one waits for the fleet, with a progress bar."""

from __future__ import annotations

import threading
import time
from typing import Any

from edgefleet_contract.errors import EdgefleetError

from .data import FACTORY_VERSION, MODEL
from .fleet import Agent
from .ui import Api, console, progress, wait

TARGET = "tag:site=demo"


def settle_leftovers(api: Api) -> None:
    """An earlier demo stopped mid-way leaves a resumable run or an active rollout: end them."""
    for run in api.call("GET", "/training/runs", params={"limit": 1000})["items"]:
        if run["status"] in ("pending", "running"):
            api.call("POST", f"/training/runs/{run['id']}/stop", ok=(409,))
    for rollout in api.call("GET", "/rollouts")["items"]:
        if rollout["status"] not in ("completed", "aborted", "rolled_back"):
            api.call("POST", f"/rollouts/{rollout['id']}/abort", ok=(409,))


def push(api: Api, package: bytes) -> dict[str, Any]:
    """Register a package (signed into TUF by the server); one already there is fine."""
    doc = api.call(
        "POST",
        "/artifacts/models",
        content=package,
        headers={"Content-Type": "application/octet-stream"},
        ok=(409,),
    )
    return doc if isinstance(doc, dict) else {}


def artifact(api: Api, version: str) -> dict[str, Any]:
    """The registry's int8 ONNX package of the demo model at ``version``."""
    items = api.call("GET", "/artifacts", params={"name": MODEL, "limit": 1000})["items"]
    for item in items:
        if item["version"] == version and item["flavor"] == "onnx-int8":
            return dict(item)
    raise EdgefleetError(f"the registry holds no {MODEL} {version} onnx-int8 package")


def reported(api: Api, device_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = api.twin(device_id).get("reported") or {}
    return doc


def serving(api: Api, device_id: str, version: str) -> bool:
    model = reported(api, device_id).get("model") or {}
    return bool(model.get("name") == MODEL and model.get("version") == version)


def raw_telemetry(api: Api, device_id: str, since: float) -> list[dict[str, Any]]:
    doc = api.call(
        "GET",
        f"/devices/{device_id}/telemetry",
        params={"resolution": "raw", "since": since, "limit": 10_000},
    )
    rows: list[dict[str, Any]] = doc["raw"]
    return rows


def labelled(api: Api, device_id: str, since: float) -> int:
    rows = raw_telemetry(api, device_id, since)
    learning = (rows[-1].get("learning") or {}) if rows else {}
    return int(learning.get("labelled_samples", 0))


def latest_drift(api: Api, device_id: str, since: float) -> dict[str, Any]:
    """The newest drift report the device sent since ``since`` ({} before the first)."""
    reports = [row["drift"] for row in raw_telemetry(api, device_id, since) if row.get("drift")]
    return dict(reports[-1]) if reports else {}


def baseline_ready(api: Api, device_id: str, since: float) -> bool:
    return "baseline" in latest_drift(api, device_id, since)


def drift_alerts(api: Api) -> list[str]:
    """Devices the overview lists under input drift (its default window)."""
    summary = api.call("GET", "/console/summary")
    return sorted(a["device_id"] for a in summary["alerts"]["drift"]["items"])


def train(api: Api, agents: list[Agent], *, rounds: int, stop: threading.Event) -> dict[str, Any]:
    """A federated run over the demo devices, as ``fleetctl train start`` would start it.

    It starts from the factory model, which every demo run puts the devices back on: a
    re-run trains what the fleet serves, not the candidate an earlier run left behind
    (five more rounds on that one often gained nothing, and nothing was rolled out)."""
    spec = {
        "model": MODEL,
        "parent_version": FACTORY_VERSION,
        "target": TARGET,
        "rounds": rounds,
        "min_clients": len(agents),
        "round_timeout_s": 120,
        "quorum_wait_s": 60,
        "strategy": "fedavg",
        "local": {"epochs": 5, "lr": 0.1, "batch_size": 16},
    }
    run = api.call("POST", "/training/runs", json=spec)
    shown = 0
    with progress() as bar:
        task = bar.add_task(f"federated rounds ({run['id'][:8]})", total=rounds)

        def count() -> int:
            nonlocal run, shown
            run = api.call("GET", f"/training/runs/{run['id']}")
            for r in (run.get("rounds") or [])[shown:]:
                bar.console.print(
                    f"  round {r['round']}: held-out accuracy {r['accuracy']:.3f}, "
                    f"{len(r['participants'])} devices, "
                    f"{(r['bytes_out'] + r['bytes_in']) / 1e3:.0f} kB"
                )
                shown += 1
            if run["status"] not in ("pending", "running"):
                return rounds
            return int(run["completed_rounds"])

        wait(bar, task, count, stop, timeout=120 + rounds * 150)
    # The candidate is built after the last round; the run completes once it is handed over.
    deadline = time.monotonic() + 300
    while run["status"] in ("pending", "running"):
        if stop.wait(0.5):
            break
        if time.monotonic() > deadline:
            raise EdgefleetError(f"training run {run['id']} did not finish")
        run = api.call("GET", f"/training/runs/{run['id']}")
    if run["status"] != "completed":
        raise EdgefleetError(f"training run {run['id']} {run['status']}: {run['detail']}")
    return dict(run)


def signed_target(api: Api, target_path: str) -> dict[str, Any] | None:
    """The TUF targets entry devices will verify, read from the server's public ``/tuf/``."""
    import httpx

    base = f"{api.url}/tuf/metadata"
    timestamp = httpx.get(f"{base}/timestamp.json", timeout=30).json()
    snap_version = timestamp["signed"]["meta"]["snapshot.json"]["version"]
    snapshot = httpx.get(f"{base}/{snap_version}.snapshot.json", timeout=30).json()
    targets_version = snapshot["signed"]["meta"]["targets.json"]["version"]
    targets = httpx.get(f"{base}/{targets_version}.targets.json", timeout=30).json()
    entry: dict[str, Any] | None = targets["signed"]["targets"].get(target_path)
    return entry


def roll_out(
    api: Api, agents: list[Agent], version: str, *, probation: str, stop: threading.Event
) -> dict[str, Any]:
    """Canary one device, then waves of half and all, gated on health and installs."""
    plan = {
        "artifact": f"{MODEL}@{version}:onnx-int8",
        "target": TARGET,
        "canary": "1",
        "waves": "50%,100%",
        "pace": "600/min",
        "probation": probation,
        "gates": ["error_rate<0.05", "install_success_rate>=1"],
        "device_timeout": "5m",
    }
    rollout = api.call("POST", "/rollouts", json=plan)
    console.print(
        f"  rollout {rollout['id']}: "
        + ", then ".join(f"{w['name']} ({w['size']})" for w in rollout["waves"])
        + f"; gates {', '.join(plan['gates'])}; probation {probation}"
    )
    with progress() as bar:
        task = bar.add_task(f"devices on {MODEL} {version}", total=len(agents))

        def count() -> int:
            nonlocal rollout
            rollout = api.call("GET", f"/rollouts/{rollout['id']}")
            if rollout["status"] in ("aborted", "rolled_back", "halted"):
                raise EdgefleetError(f"rollout {rollout['status']}: {rollout['reason']}")
            on_new = sum(serving(api, a.id, version) for a in agents)
            return on_new if rollout["status"] == "completed" else min(on_new, len(agents) - 1)

        wait(bar, task, count, stop, timeout=600)
    for w in rollout["waves"]:
        gates = ", ".join(
            f"{g.get('gate', g.get('name', '?'))}={g.get('value')}" for g in (w["gates"] or [])
        )
        console.print(f"  {w['name']}: {w['state']}; gates {gates or 'none'}")
    return dict(rollout)
