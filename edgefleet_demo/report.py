"""The demo's closing figures, each read back from the server (twins, runs, telemetry)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from .fleet import Agent
from .steps import drift_alerts, raw_telemetry, reported
from .ui import Api, console


def collect(
    api: Api,
    agents: list[Agent],
    *,
    run: dict[str, Any],
    rollout: dict[str, Any],
    version: str,
    started: float,
    wall_clock_start: float,
    counts: dict[str, int],
    shifted: list[str],
) -> dict[str, Any]:
    devices: dict[str, dict[str, Any]] = {}
    for agent in agents:
        state = reported(api, agent.id)
        update = state.get("update") or {}
        batches = raw_telemetry(api, agent.id, wall_clock_start)
        devices[agent.id] = {
            "model_version": (state.get("model") or {}).get("version"),
            "update_phase": update.get("phase"),
            "update_bytes": int(update.get("bytes_transferred", 0)),
            "telemetry_batches": len(batches),
        }
    fl_bytes = sum(r["bytes_out"] + r["bytes_in"] for r in run.get("rounds") or [])
    update_bytes = sum(d["update_bytes"] for d in devices.values())
    result = run["result"]
    return {
        "model": result.get("parent", "").split("@")[0],
        "version": version,
        "run_id": run["id"],
        "rollout_id": rollout["id"],
        "accuracy_before": result["baseline_accuracy"],
        "accuracy_after": result["accuracy"],
        "round_accuracy": [r["accuracy"] for r in run.get("rounds") or []],
        "devices": devices,
        "devices_updated": sum(
            d["model_version"] == version and d["update_phase"] == "committed"
            for d in devices.values()
        ),
        "fl_bytes": fl_bytes,
        "update_bytes": update_bytes,
        "bytes_moved": fl_bytes + update_bytes,
        "shifted_devices": shifted,
        "drift_alerts": drift_alerts(api),
        "seconds": time.monotonic() - started,
        "since": wall_clock_start,
        **counts,
    }


def show(summary: dict[str, Any], path: Path) -> None:
    table = Table(title="devices")
    cols = ("device", "model version", "update", "update bytes", "telemetry batches", "inputs")
    for col in (*cols, "drift alert"):
        table.add_column(col)
    for device_id, d in summary["devices"].items():
        table.add_row(
            device_id,
            str(d["model_version"]),
            str(d["update_phase"]),
            f"{d['update_bytes']:,}",
            str(d["telemetry_batches"]),
            "shifted" if device_id in summary["shifted_devices"] else "unchanged",
            "[bold red]yes[/]" if device_id in summary["drift_alerts"] else "no",
        )
    console.print(table)
    total = len(summary["devices"])
    console.print(
        f"[bold]held-out accuracy[/] {summary['accuracy_before']:.3f} → "
        f"{summary['accuracy_after']:.3f}   "
        f"[bold]devices updated[/] {summary['devices_updated']}/{total} to "
        f"{summary['version']}   "
        f"[bold]bytes moved[/] {summary['bytes_moved'] / 1e6:.2f} MB "
        f"(training {summary['fl_bytes'] / 1e6:.2f} MB, updates "
        f"{summary['update_bytes'] / 1e6:.2f} MB)   "
        f"[bold]time[/] {summary['seconds']:.0f}s"
    )
    path.write_text(json.dumps(summary, indent=2))
    console.print(f"summary written to {path}")
