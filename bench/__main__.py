"""``python -m bench`` (``make bench``): run every benchmark and write docs/benchmarks.md."""

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
}


def versions() -> str:
    names = ("paho-mqtt", "pydantic", "cryptography", "sqlite-utils", "fastapi", "uvicorn")
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


def main() -> None:
    only = set(sys.argv[1:])
    sections = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`). Figures are from one run on the",
        "machine below; wherever possible a figure is a ratio against a baseline measured",
        "in the same run, because absolute numbers on a shared 2-core machine are noisy.",
        "",
        f"- machine: {machine()}, {platform.platform()}",
        f"- versions: {versions()}",
        f"- date: {time.strftime('%Y-%m-%d')}",
        "",
    ]
    for module, title in MODULES.items():
        if only and module not in only:
            continue
        mod = importlib.import_module(f"bench.{module}")
        print(f"running {module} ...", flush=True)
        rows = mod.run()
        sections += [f"## {title}", "", (mod.__doc__ or "").strip(), "", table(rows), ""]
        print(table(rows), flush=True)
    out = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
    out.write_text("\n".join(sections))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
