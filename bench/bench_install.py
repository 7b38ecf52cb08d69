"""Install size of the agent by runtime: a fresh venv per extra with ``pip install
'.[EXTRA]'`` from this checkout (pip's default: compiled bytecode included), measured as
the bytes of every file in the venv (and without the ``.pyc`` files, which a device
also writes lazily for what it imports).  The bare venv (Python's own venv with pip) is
measured in the same run and shown beside it; ``agent`` (both runtimes, as every agent
installed before the per-runtime extras) is the baseline the ratios compare with.
Target: an agent with one runtime at most 150 MB.  Not reachable with today's wheels: ONNX
Runtime 1.32 (~80 MB, its Python binding and its library are ~35 MB each) and numpy with
its OpenBLAS (~71 MB) come to ~151 MB before anything else, and the venv's own pip and
setuptools add ~20 MB.  What the agent does not run is left out: rich and PyYAML (the
operator's terminal output, ~17 MB with pygments and markdown-it) are in the ``cli``
extra, not in a device install; the rest is the agent's own stack (cryptography 16 MB,
pydantic 10 MB, httpx, python-tuf, paho) and the bytecode pip compiles (the "without the
bytecode" figure: ``pip install --no-compile``, Python then compiles what it imports)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = ("agent", "agent-onnx", "agent-tflite")
MB = 1_000_000
GOAL_MB = 150


def _size(path: Path, *, bytecode_only: bool = False) -> int:
    files = (f for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return sum(f.stat().st_size for f in files if not bytecode_only or f.suffix == ".pyc")


def _site_packages(env: Path) -> Path:
    return next(env.glob("lib/python*/site-packages"))


def _largest(env: Path, count: int = 3) -> str:
    site = _site_packages(env)
    sizes = {p.name: _size(p) for p in site.iterdir() if p.is_dir() and "dist-info" not in p.name}
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:count]
    return ", ".join(f"{name} {size / MB:.0f}" for name, size in top)


def _source(tmp: Path) -> Path:
    """The distribution's files copied out, so building it leaves nothing in the checkout:
    the packages and data files pyproject.toml names (read from it, so a new package or
    doc file is measured without editing this)."""
    src = tmp / "src"
    src.mkdir()
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = [pattern.rstrip("*") for pattern in tool["packages"]["find"]["include"]]
    files = [f for group in tool.get("data-files", {}).values() for f in group]
    for name in ["pyproject.toml", "README.md", *files]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    for package in packages:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _install(env: Path, source: Path, extra: str) -> None:
    venv.EnvBuilder(with_pip=True).create(env)
    subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "install", "-q", f"{source}[{extra}]"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def run() -> list[dict[str, object]]:
    sizes: dict[str, int] = {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="edgefleet-install-") as tmp:
        bare = Path(tmp) / "bare"
        venv.EnvBuilder(with_pip=True).create(bare)
        empty = _size(bare)
        source = _source(Path(tmp))
        for extra in EXTRAS:
            env = Path(tmp) / extra
            print(f"  pip install '.[{extra}]' ...", file=sys.stderr, flush=True)
            _install(env, source, extra)
            sizes[extra] = _size(env)
            pyc = _size(env, bytecode_only=True)
            notes[extra] = (
                f"{(sizes[extra] - pyc) / MB:.0f} MB without the bytecode pip compiles; "
                f"largest (MB): {_largest(env)}"
            )
    both = sizes["agent"]
    one = max(("agent-onnx", "agent-tflite"), key=lambda e: sizes[e])
    rows: list[dict[str, object]] = [
        {
            "measure": "agent install size with one runtime",
            "figure": f"{sizes[one] / MB:.0f} MB",
            "baseline": f"{both / MB:.0f} MB for both runtimes ('agent')",
            "ratio": f"{sizes[one] / both:.2f}x",
            "note": f"the larger one-runtime install ({one}); goal <= {GOAL_MB} MB; "
            f"the bare venv alone is {empty / MB:.0f} MB; {notes[one]}",
        }
    ]
    for extra in EXTRAS:
        rows.append(
            {
                "measure": f"venv with '.[{extra}]'",
                "figure": f"{sizes[extra] / MB:.0f} MB",
                "baseline": f"{both / MB:.0f} MB ('agent')",
                "ratio": f"{sizes[extra] / both:.2f}x",
                "note": f"{(sizes[extra] - empty) / MB:.0f} MB over the bare venv; {notes[extra]}",
            }
        )
    return rows
