"""``python -m bench`` (``make bench``): run every benchmark and write docs/benchmarks.md.

``python -m bench --print bench_api`` runs one and only prints its table.
"""

from __future__ import annotations

import contextlib
import importlib
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from ._lab import machine, table

MODULES = {
    "bench_ingest": "Ingest throughput (issue: fleet server core)",
    "bench_api": "API latency (issue: fleet server core)",
    "bench_connections": "Connected devices (issue: fleet server core)",
    "bench_metrics": "Recording one inference's metrics (issue: agent daemon)",
    "bench_drift": "Drift alerts: false alerts and detection (issue: model monitoring)",
    "bench_spool": "Spool drain after an outage (issue: agent daemon)",
    "bench_inference": "Inference overhead and int8 vs float (issue: agent daemon)",
    "bench_agent_rss": "Idle agent memory (issue: agent daemon)",
    "bench_install": "Agent install size by runtime (issue: bring your own model)",
    "bench_spool_broker": "Spool drain through the real broker (issue: agent daemon)",
    "bench_federated": "Federated quality and bytes per round (issue: federated training)",
    "bench_fl_rounds": "Federated round overhead and agent memory (issue: federated training)",
    "bench_fl_scale": (
        "Federated round overhead at fleet scale (issue: federated training on real fleets)"
    ),
    "bench_delta": "Delta updates (issue: signed OTA)",
    "bench_console": "Console pages at 10,000 devices (issue: web console)",
    "bench_rollouts": "Rollout engine throughput, no real devices (issue: signed OTA)",
    "bench_ota_device": "OTA on the device: verification cost and delta bytes (issue: signed OTA)",
    "bench_simulator": "Fleet simulator at scale (issue: demo, simulator, benchmarks)",
    "bench_byom": "Your own models: predict overhead, int8, pack time (issue: your own model)",
    "bench_gates": "Champion/challenger gate (issue: model monitoring)",
    "bench_estimate": "Label-free accuracy estimate (issue: model monitoring)",
    "bench_fuzz": "Fuzzing the hostile-input readers (issue: security hardening)",
    "bench_shadow": "Shadow runs: the answer's cost, the bounded queue (issue: model monitoring)",
    "bench_pg_ingest": "Ingest throughput on PostgreSQL (issue: PostgreSQL and replicas)",
    "bench_pg_api": "API latency on both backends (issue: PostgreSQL and replicas)",
    "bench_ingest_workers": "Ingest with two workers (issue: PostgreSQL and replicas)",
    "bench_lease": "Singleton lease failover (issue: PostgreSQL and replicas)",
    "bench_cluster": (
        "Broker cluster: ACL probes, a node killed, ingest, connections (issue: broker cluster)"
    ),
    "bench_coverage": "Branch coverage of the packages (issue: proof for every claim)",
    "bench_mutation": "Mutation score of the core modules (issue: proof for every claim)",
}


def versions() -> str:
    names = (
        "paho-mqtt",
        "pydantic",
        "cryptography",
        "sqlite-utils",
        "fastapi",
        "uvicorn",
        "SQLAlchemy",
        "psycopg",
    )
    found = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    import sqlite3
    import subprocess

    mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()
    found.append(f"SQLite {sqlite3.sqlite_version}")
    if mosq:
        found.append(mosq[0].strip())
    return ", ".join(found)


def _sections(text: str) -> dict[str, str]:
    """Existing ``## title`` sections, so a partial run keeps the other figures."""
    out: dict[str, str] = {}
    for chunk in text.split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        out[title.strip()] = body.strip()
    return out


def write(results: dict[str, list[dict[str, object]]]) -> Path:
    """Put each module's rows into its section of docs/benchmarks.md, keeping the others."""
    out = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
    sections = _sections(out.read_text()) if out.exists() else {}
    for module, rows in results.items():
        mod = importlib.import_module(f"bench.{module}")
        stamp = f"_{time.strftime('%Y-%m-%d')}, {machine()}_"
        sections[MODULES[module]] = "\n\n".join([(mod.__doc__ or "").strip(), stamp, table(rows)])
    header = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench [module ...]`). Figures come from runs on",
        "the machine below; wherever possible a figure is a ratio against a baseline measured",
        "in the same run, because absolute numbers on a shared 2-core machine are noisy.",
        "",
        f"- machine: {machine()}, {platform.platform()}",
        f"- versions: {versions()}",
        "",
    ]
    body = [f"## {title}\n\n{sections[title]}\n" for title in MODULES.values() if title in sections]
    out.write_text("\n".join(header + body))
    return out


def main() -> None:
    """Run all benchmarks, or those named on the command line (``python -m bench bench_api``).

    ``--print`` shows the tables and writes nothing, for trying a benchmark out
    without touching docs/benchmarks.md; the modules need no ``__main__`` of their own.
    """
    args = sys.argv[1:]
    dry = "--print" in args
    only = {a for a in args if a != "--print"}
    if dry:
        print(f"machine: {machine()}")
    for module in MODULES:
        if only and module not in only:
            continue
        mod = importlib.import_module(f"bench.{module}")
        print(f"running {module} ...", flush=True)
        rows = mod.run()
        print(table(rows), flush=True)
        if not dry:
            print(f"wrote {write({module: rows})}")


if __name__ == "__main__":
    main()
