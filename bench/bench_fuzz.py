"""Fuzzing the hostile-input readers (not part of CI): atheris, coverage-guided, in a child
process per target (``bench/_fuzz_target.py``), seeded with valid inputs and a fixed seed.

Targets: the MQTT payload codec (``Codec.decode`` on every device channel and on
foreign topics), the model package reader (``parse_package``) and the firmware bundle
reader (``parse_bundle``) - each fed whole mutated archives and, half the time, a
mutated ``manifest.json`` zipped with the real members so the schema and member checks
are reached - and the device selector parser (``selector.parse`` plus evaluating what
it parsed).  A crash is any exception but the reader's documented refusal, or a hang
over 10 s on one input.  Each target runs for ``FUZZ_SECONDS`` (default 60) of wall
time on the shared machine; "executions" is libFuzzer's own count.  Needs ``pip install
atheris`` (the ``fuzz`` extra).  A crash would be listed with its exception; its
fix gets a regression test in a ``tests/test_hardening_*.py``.  None was found in the run
below."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TARGETS = ("codec", "package", "bundle", "selector")


def fuzz(target: str, seconds: int, work: Path) -> dict[str, object]:
    crashes = work / f"{target}-crash-"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench._fuzz_target",
            target,
            str(work / f"{target}-corpus"),
            f"-max_total_time={seconds}",
            "-seed=1",
            "-timeout=10",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={crashes}",
            "-print_final_stats=1",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    log = proc.stderr + proc.stdout
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log) or re.findall(
        r"Done (\d+) runs", log
    )
    found = sorted(p.name for p in work.glob(f"{target}-crash-*"))
    exc = re.search(r"=== Uncaught Python exception: ===\n(.+?)\n", log)
    executions = int(runs[-1]) if runs else 0
    return {
        "target": target,
        "executions": executions,
        "executions/s": round(executions / seconds),
        "crashes": len(found) or int(proc.returncode not in (0,)),
        "first crash": exc.group(1)[:100] if exc else ("" if proc.returncode == 0 else log[-200:]),
    }


def run() -> list[dict[str, object]]:
    seconds = int(os.environ.get("FUZZ_SECONDS", "60"))
    with tempfile.TemporaryDirectory(prefix="edgefleet-fuzz-") as tmp:
        return [fuzz(t, seconds, Path(tmp)) for t in TARGETS]
