"""The README's run command, in a short mode: it must work, and work twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .harness import free_port

BIN = Path(sys.executable).parent


def test_demo_runs_twice(tmp_path: Path) -> None:
    env = {**os.environ, "DEMO_API_PORT": str(free_port()), "DEMO_BROKER_PORT": str(free_port())}
    for _ in range(2):
        result = subprocess.run(
            [
                str(BIN / "fleet-server"),
                "demo",
                "--devices",
                "2",
                "--duration",
                "0.5",
                "--data-dir",
                str(tmp_path / "demo"),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "2 devices enrolled and online" in result.stdout
        assert result.stdout.count("in sync") == 2
