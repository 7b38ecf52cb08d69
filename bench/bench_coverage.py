"""Branch coverage of the packages (agent, fleet_server and the edgefleet_* ones) under the whole
suite, the subprocesses it starts (fleet-server, edge-agent, fleetctl) included.

`make test` runs pytest under coverage.py with branch measurement (`[tool.coverage.run]` in
pyproject.toml) and prints this summary after the tests; this module reads the data that run
left in `.cache/coverage` (or runs `make test` when there is none).  "branch coverage" is
coverage.py's total with branches on: (statements run + branch arcs taken) ÷ (statements +
branch arcs); the arcs alone are shown beside it.  Tests that run on the legacy TFLite venv
(`.ci/tflite-legacy.sh`) are not measured.  The figure is printed, not enforced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import coverage

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".cache" / "coverage"
PACKAGES = (
    "agent",
    "fleet_server",
    "edgefleet_contract",
    "edgefleet_common",
    "edgefleet_sim",
    "edgefleet_demo",
)


def _combined() -> coverage.Coverage:
    """The run's data, the per-process files combined into one (idempotent)."""
    cov = coverage.Coverage(config_file=str(ROOT / "pyproject.toml"))
    if any(p.name.startswith("data.") for p in DATA.iterdir()):
        cov.combine(keep=False, strict=False)
        cov.save()
    cov.load()
    return cov


def _totals(cov: coverage.Coverage) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "coverage.json"
        cov.json_report(outfile=str(out))
        report: dict[str, Any] = json.loads(out.read_text())
    return report


def _ratio(statements: int, run: int, branches: int, taken: int) -> dict[str, object]:
    total = statements + branches
    return {
        "figure": f"{(run + taken) / total:.3f}" if total else "n/a",
        "statements run": f"{run}/{statements}",
        "branch arcs taken": f"{taken}/{branches}",
        "arcs alone": f"{taken / branches:.3f}" if branches else "n/a",
    }


def rows_from(report: dict[str, Any]) -> list[dict[str, object]]:
    """The packages' row first, then one row per package."""
    t = report["totals"]
    rows = [
        {
            "measure": "branch coverage, packages",
            **_ratio(
                t["num_statements"], t["covered_lines"], t["num_branches"], t["covered_branches"]
            ),
        }
    ]
    for package in PACKAGES:
        sums = [0, 0, 0, 0]
        for name, entry in report["files"].items():
            if Path(name).parts[0] != package:
                continue
            s = entry["summary"]
            for i, key in enumerate(
                ("num_statements", "covered_lines", "num_branches", "covered_branches")
            ):
                sums[i] += int(s[key])
        if sums[0]:
            rows.append({"measure": f"branch coverage, {package}", **_ratio(*sums)})
    return rows


def print_summary() -> int:
    """What `make test` prints after the suite: the lowest-covered files, then the rows."""
    if not DATA.is_dir():
        print("no coverage data in .cache/coverage", file=sys.stderr)
        return 1
    cov = _combined()
    cov.report(file=sys.stdout, skip_covered=True, sort="cover", show_missing=False)
    for row in rows_from(_totals(cov)):
        print(" | ".join(str(v) for v in row.values()))
    return 0


def run() -> list[dict[str, object]]:
    if not DATA.is_dir() or not any(DATA.iterdir()):
        subprocess.run(["make", "test"], cwd=ROOT, check=False)
    cov = _combined()
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(os.path.getmtime(DATA / "data")))
    rows = rows_from(_totals(cov))
    for row in rows:
        row["suite run"] = f"{stamp} UTC"
    return rows


if __name__ == "__main__":
    sys.exit(print_summary())
