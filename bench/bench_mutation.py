"""Mutation score of the core modules: each module mutated by mutmut and run against its own
fast unit tests only (not the end-to-end suite), so a surviving mutant names a behaviour those
tests do not pin down.

Score = killed ÷ (killed + survived), timeouts counted as killed (and listed); a mutant in code
no selected test runs ("no tests") counts as survived.  Each core runs in its own scratch
directory under `.cache/mutation/` (mutmut reads its settings from the working directory's
pyproject.toml), niced, two children at a time, on SQLite only, with a timeout per mutant
(10 x its tests' time on the unmutated code + 2 s) and none per core.  Not part of CI:
`python -m bench bench_mutation` (`make mutation`) runs every core; `python -m
bench.bench_mutation [core-slug ...] [--report] [--write]` runs some (`--report`: only read
the last results; `--write`: into docs/benchmarks.md).  The survivors, with their diffs, go to
docs/mutation-survivors.md, each with its reason (one line a mutant, kept in
bench/mutation_notes.txt); docs/mutation.md says how to read them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / ".cache" / "mutation"
MUTMUT = Path(sys.executable).parent / "mutmut"
SURVIVORS = ROOT / "docs" / "mutation-survivors.md"
NOTES = ROOT / "bench" / "mutation_notes.txt"
"""One line per survivor left alive on purpose: ``mutant name: why`` (mutmut's names change
when the mutated function does, so a stale note shows up as a survivor without one)."""
# What the scratch directory links to: the packages mutmut copies, the tests, their data.
MUTATED = ("agent", "fleet_server", "edgefleet_contract")
COPIED = ("edgefleet_common", "edgefleet_sim", "edgefleet_demo", "models", "firmware_images")
"""Copied into mutmut's ``mutants/`` as they are: the tests import them (or read their files
next to ``tests/``), and without a copy Python would find them through the editable install,
which points at whichever checkout ran ``make setup``, not this one."""
LINKED = (*MUTATED, *COPIED, "tests")
TIMEOUT_MULTIPLIER, TIMEOUT_CONSTANT_S = 10.0, 2.0
"""A mutant's tests are stopped (and it counts as a timeout, so killed) after ``multiplier x
(what those tests took on the unmutated code + constant)``: a per-mutant cap, so a mutant that
loops forever costs seconds, and no per-core cap cuts a slow core short with mutants not
checked."""
PYTEST_ARGS = ("-p", "no:cacheprovider", "-q", "-x", "-k", "not postgresql")
"""The fast unit tests only: the PostgreSQL half of a test that runs on both stores would start
a private cluster in every mutant's test process, and none of the cores' logic differs by
store."""


@dataclass(frozen=True)
class Core:
    name: str
    module: str
    tests: tuple[str, ...]


CORES = (
    Core(
        "rollout engine",
        "fleet_server/rollouts/engine.py",
        (
            "tests/test_rollout_engine.py",
            "tests/test_rollout_engine_reports.py",
            "tests/test_rollout_properties.py",
            "tests/test_rollout_gate_data.py",
            "tests/test_rollout_shadow.py",
            "tests/test_rollout_champion.py",
        ),
    ),
    Core(
        "rollout shadow step",
        "fleet_server/rollouts/shadow.py",
        (
            "tests/test_rollout_shadow.py",
            "tests/test_rollout_gate_data.py",
            "tests/test_rollout_engine.py",
            "tests/test_rollout_engine_reports.py",
        ),
    ),
    Core(
        "rollout gates",
        "fleet_server/rollouts/gates.py",
        (
            "tests/test_rollout_gates.py",
            "tests/test_rollout_plan.py",
            "tests/test_rollout_gate_data.py",
            "tests/test_rollout_champion.py",
            "tests/test_rollout_shadow.py",
        ),
    ),
    Core(
        "selector",
        "fleet_server/selector.py",
        (
            "tests/test_selector.py",
            # the SQL half: each selector chooses in SQLite what it matches in Python
            "tests/test_store_postgres.py::test_selectors_in_sql_choose_what_matches_chooses",
        ),
    ),
    Core("codec", "edgefleet_contract/codec.py", ("tests/test_contract.py",)),
    Core(
        "package reader",
        "edgefleet_contract/package.py",
        ("tests/test_package.py", "tests/test_task_manifest.py"),
    ),
    Core("enrollment", "fleet_server/enrollment.py", ("tests/test_enrollment.py",)),
    Core("auth", "fleet_server/auth.py", ("tests/test_auth.py",)),
    Core("spool policy", "agent/spool.py", ("tests/test_spool.py",)),
    Core("update machine", "agent/updates/machine.py", ("tests/test_ota_core.py",)),
)
KILLED = {"killed", "timeout", "caught by type check", "segfault"}
ALIVE = {"survived", "no tests"}


def _slug(name: str) -> str:
    return name.replace(" ", "-")


def _scratch(core: Core) -> Path:
    """A directory that looks like the repo to mutmut, with this core's settings.

    An existing one is reused: mutmut re-checks only the mutants of functions that changed
    (delete the directory after changing the core's tests, or `.cache/mutation` to redo all).
    """
    folder = SCRATCH / _slug(core.name)
    folder.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(ROOT / name)
    settings = "\n".join(
        [
            "",
            "[tool.mutmut]",
            f"source_paths = {list(MUTATED)!r}",
            f"also_copy = {list(COPIED)!r}",
            f'only_mutate = ["{core.module}"]',
            f"pytest_add_cli_args_test_selection = {list(core.tests)!r}",
            f"pytest_add_cli_args = {list(PYTEST_ARGS)!r}",
            f"timeout_multiplier = {TIMEOUT_MULTIPLIER}",
            f"timeout_constant = {TIMEOUT_CONSTANT_S}",
            "",
        ]
    ).replace("'", '"')
    (folder / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + settings)
    return folder


def _results(folder: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(MUTMUT), "results", "--all", "true"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            found[name] = status
    return found


_DIFFS = """
import json, sys
from mutmut.__main__ import find_mutant, get_diff_for_mutant
out = {}
for name in json.loads(sys.stdin.read()):
    out[name] = get_diff_for_mutant(name, path=find_mutant(name).path)
print(json.dumps(out))
"""


def _diffs(folder: Path, mutants: list[str]) -> dict[str, str]:
    """Each mutant's diff, from one process (``mutmut show`` per mutant is slow)."""
    done = subprocess.run(
        [sys.executable, "-c", _DIFFS],
        cwd=folder,
        input=json.dumps(mutants),
        capture_output=True,
        text=True,
        check=True,
    )
    found: dict[str, str] = json.loads(done.stdout)
    return {
        name: "\n".join(
            line
            for line in diff.splitlines()
            if line.startswith(("+", "-", "@@")) and not line.startswith(("+++", "---"))
        )
        for name, diff in found.items()
    }


def mutate(core: Core) -> tuple[dict[str, str], float, Path]:
    """Run mutmut on one core; the status of each mutant, and the wall time."""
    folder = _scratch(core)
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    env.pop("COVERAGE_PROCESS_START", None)
    env.pop("COVERAGE_PROCESS_CONFIG", None)
    started = time.monotonic()
    with (folder / "mutmut.log").open("w") as log:
        done = subprocess.run(
            ["nice", "-n", "10", str(MUTMUT), "run", "--max-children", "2"],
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode:  # e.g. the tests fail on the unmutated code: say why, not just "0/N"
        tail = (folder / "mutmut.log").read_text(errors="replace")[-2000:]
        print(f"mutmut failed on {core.name} ({done.returncode}):\n{tail}", file=sys.stderr)
    return _results(folder), time.monotonic() - started, folder


def _row(core: Core, statuses: dict[str, str], wall_s: float) -> dict[str, object]:
    counts = {s: sum(1 for v in statuses.values() if v == s) for s in set(statuses.values())}
    killed = sum(counts.get(s, 0) for s in KILLED)
    alive = sum(counts.get(s, 0) for s in ALIVE)
    other = len(statuses) - killed - alive
    return {
        "measure": f"mutation score, {core.name}",
        "figure": f"{killed / (killed + alive):.3f}" if killed + alive else "n/a",
        "killed": killed,
        "of which timeouts": counts.get("timeout", 0),
        "survived": counts.get("survived", 0),
        "no tests": counts.get("no tests", 0),
        "not counted": other,  # "not checked": the run was cut short
        "module": f"`{core.module}`",
        "tests": ", ".join(Path(t).stem for t in core.tests),
        "wall s": f"{wall_s:.0f}",
    }


def _notes() -> dict[str, str]:
    found = {}
    for line in NOTES.read_text().splitlines() if NOTES.exists() else []:
        name, sep, why = line.partition(": ")
        if sep and not line.startswith("#"):
            found[name.strip()] = why.strip()
    return found


# This code base writes SQL keywords in capitals, so a capital keyword marks a SQL string.
_SQL = re.compile(r"\b(SELECT|INSERT|DELETE|UPDATE|WHERE|RETURNING|VALUES|FROM|LIMIT)\b")


def _obvious(diff: str) -> str | None:
    """The one kind of equivalent mutant recognised from its diff: a SQL string's case."""
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-")]
    added = [line[1:] for line in diff.splitlines() if line.startswith("+")]
    same = [a.lower() for a in removed] == [b.lower() for b in added]
    if removed and same and all(_SQL.search(line) for line in removed):
        return "equivalent: only the case of a SQL string changed (SQLite ignores it)"
    return None


def _survivor_section(core: Core, statuses: dict[str, str], folder: Path) -> list[str]:
    checked = sum(1 for v in statuses.values() if v != "not checked")
    lines = [f"## {core.name} (`{core.module}`)", "", f"{checked} of {len(statuses)} checked.", ""]
    listed = sorted(n for n, s in statuses.items() if s in ALIVE or s == "timeout")
    if not listed:
        return [*lines, "No survivors, no timeouts.", ""]
    diffs, notes = _diffs(folder, listed), _notes()
    for name in listed:
        why = notes.get(name) or _obvious(diffs[name])
        why = why or ("not explained yet" if statuses[name] in ALIVE else "counted killed")
        lines += [f"### `{name}`: {statuses[name]}", "", f"Why: {why}", ""]
        lines += ["```diff", diffs[name], "```", ""]
    return lines


def _write_survivors(sections: dict[str, list[str]]) -> None:
    """Keep the other cores' sections when only some cores were run."""
    old = SURVIVORS.read_text() if SURVIVORS.exists() else ""
    kept: dict[str, str] = {}
    for chunk in re.split(r"(?m)^(?=## )", old):
        if chunk.startswith("## "):
            kept[chunk.split(" (`")[0][3:].strip()] = chunk.rstrip() + "\n"
    for name, lines in sections.items():
        kept[name] = "\n".join(lines).rstrip() + "\n"
    head = [
        "# Surviving mutants of the core modules",
        "",
        "Written by `python -m bench bench_mutation`; each survivor's reason comes from",
        "bench/mutation_notes.txt (docs/mutation.md says how to read them).  Timeouts are",
        "listed too; they count as killed.",
        "",
    ]
    body = [kept[c.name] for c in CORES if c.name in kept]
    SURVIVORS.write_text("\n".join(head) + "\n" + "\n".join(body))


def _results_of(core: Core, execute: bool) -> tuple[dict[str, str], float, Path] | None:
    folder = SCRATCH / _slug(core.name)
    if execute:
        statuses, wall_s, folder = mutate(core)
        (folder / "wall_s").write_text(f"{wall_s:.0f}")
        return statuses, wall_s, folder
    if not (folder / "mutants").is_dir():
        return None
    wall = folder / "wall_s"
    return _results(folder), float(wall.read_text()) if wall.exists() else float("nan"), folder


def _summary(all_rows: list[dict[str, object]]) -> dict[str, object]:
    """The cores whose every mutant was checked; a core cut short is left out and named."""
    rows = [r for r in all_rows if not r["not counted"]]
    partial = [str(r["measure"]).split(", ", 1)[1] for r in all_rows if r["not counted"]]
    measured = {str(r["measure"]).split(", ", 1)[1] for r in all_rows}
    never = [c.name for c in CORES if c.name not in measured]

    def total(key: str) -> int:
        return sum(int(str(r[key])) for r in rows)

    killed, alive = total("killed"), total("survived") + total("no tests")
    names = ", ".join(str(r["measure"]).split(", ", 1)[1] for r in rows)
    return {
        "measure": "mutation score, core modules",
        "figure": f"{killed / (killed + alive):.3f}" if killed + alive else "n/a",
        "killed": killed,
        "of which timeouts": total("of which timeouts"),
        "survived": total("survived"),
        "no tests": total("no tests"),
        "not counted": total("not counted"),
        "module": f"{len(rows)} of {len(CORES)} cores: {names}"
        + (f" (left out, not finished: {', '.join(partial)})" if partial else "")
        + (f" (left out, not run: {', '.join(never)})" if never else ""),
        "tests": "each core's own",
        "wall s": f"{sum(float(str(r['wall s'])) for r in rows):.0f}",
    }


def run(only: tuple[str, ...] = (), execute: bool = True) -> list[dict[str, object]]:
    """Mutate the cores (``only`` by slug, or all); ``execute=False`` reads the last results."""
    rows: list[dict[str, object]] = []
    sections: dict[str, list[str]] = {}
    for core in CORES:
        if only and _slug(core.name) not in only:
            continue
        found = _results_of(core, execute)
        if found is None:
            continue
        statuses, wall_s, folder = found
        rows.append(_row(core, statuses, wall_s))
        print(rows[-1], flush=True)
        sections[core.name] = _survivor_section(core, statuses, folder)
    _write_survivors(sections)
    return [_summary(rows), *rows] if rows else rows


if __name__ == "__main__":
    from . import __main__ as bench
    from ._lab import table

    args = sys.argv[1:]
    report_only = "--report" in args
    cores = tuple(a for a in args if a not in ("--report", "--write"))
    rows = run(cores, execute=not report_only)
    print(table(rows))
    if "--write" in args:  # the section of docs/benchmarks.md, from the cores named (or all)
        print(f"wrote {bench.write({'bench_mutation': rows})}")
