"""Launching ``fleetctl simulate`` from tests, and reading what it leaves behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from edgefleet_contract.errors import NotFound
from fleet_server.server import FleetServer

BIN = Path(sys.executable).parent


def simulate(
    fleet: FleetServer,
    tmp_path: Path,
    token: str,
    *extra: str,
    devices: int,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``fleetctl --json simulate`` against ``fleet`` as the logged-in ``token``.

    Its stderr (progress bars, the agents' warnings) goes to a file in ``tmp_path``
    rather than a pipe: a run of minutes could fill a pipe nobody reads and stall
    the simulator in a write.
    """
    full_env = {
        **os.environ,
        "FLEETCTL_SERVER": fleet.settings.api_url,
        "FLEETCTL_TOKEN": token,
        "FLEETCTL_CONFIG": str(tmp_path / "ctl.json"),
        **(env or {}),
    }
    cmd = [str(BIN / "fleetctl"), "--json", "simulate", "--devices", str(devices)]
    cmd += ["--data-dir", str(tmp_path / "sim"), "--telemetry-interval", "0.5", "--rate", "4"]
    log = (tmp_path / "simulate.log").open("a")
    try:
        return subprocess.Popen(
            [*cmd, *extra], env=full_env, stdout=subprocess.PIPE, stderr=log, text=True
        )
    finally:
        log.close()  # the child holds its own descriptor


def online(fleet: FleetServer, device_id: str) -> bool:
    try:
        return fleet.store.get_device(device_id).online
    except NotFound:  # not enrolled yet
        return False


def logs(tmp_path: Path, tail: int = 3000) -> str:
    """The end of what the simulator and its worker processes logged: a failure's reason."""
    files = [tmp_path / "simulate.log", *sorted((tmp_path / "sim").glob("*/logs/*.log"))]
    parts = [f"== {f.name}\n{f.read_text(errors='replace')[-tail:]}" for f in files if f.exists()]
    return "\n".join(parts)


def summary(proc: subprocess.Popen[str], tmp_path: Path, timeout: float = 180) -> dict[str, object]:
    """The simulator's JSON summary line, once it exited cleanly."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, logs(tmp_path)
    doc = json.loads(out.strip().splitlines()[-1])
    assert isinstance(doc, dict)
    return doc
