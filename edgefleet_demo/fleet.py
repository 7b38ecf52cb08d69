"""The demo's devices: one real ``edge-agent run`` process each, enrolled for real.

Every run starts its devices from the factory state (their data dirs are
wiped and they enroll again, getting fresh keys; a device id the server
already knows gets a new enrollment token), so a second run replays the whole
story instead of finding the fleet already updated.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgefleet_contract.errors import EdgefleetError

from .ui import Api


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


class Agent:
    def __init__(self, device_id: str, data_dir: Path) -> None:
        self.id = device_id
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def enroll(self, api: Api, tags: dict[str, str]) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        created = api.call("POST", "/devices", json={"id": self.id, "tags": tags}, ok=(409,))
        if not created or "token" not in created:  # known from an earlier run
            created = api.call("POST", f"/devices/{self.id}/token")
        done = subprocess.run(
            [
                *(_bin("edge-agent"), "enroll", "--server", api.url),
                *("--token", created["token"], "--data-dir", str(self.data_dir), "--force"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise EdgefleetError(f"{self.id}: edge-agent enroll failed: {done.stderr.strip()}")

    def start(self, model: Path, *, probation_s: float) -> None:
        env = {
            **os.environ,
            "EDGE_AGENT_MODEL": str(model),
            "EDGE_AGENT_LOCAL_API__PORT": "0",
            "EDGE_AGENT_TELEMETRY_INTERVAL_S": "1",
            "EDGE_AGENT_LOG_FORMAT": "text",
            "EDGE_AGENT_UPDATES__PROBATION_S": str(probation_s),
            # Drift on the demo's clock: a test whenever 100 rows arrived (not every 5 min),
            # and a baseline from the first 400 rows after each install.
            "EDGE_AGENT_DRIFT__INTERVAL_S": "0",
            "EDGE_AGENT_DRIFT__MIN_SAMPLES": "100",
            "EDGE_AGENT_DRIFT__BURN_IN_ROWS": "400",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        }
        with (self.data_dir / "agent.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [_bin("edge-agent"), "run", "--data-dir", str(self.data_dir)],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops us in order
            )

    def address(self, timeout: float = 90) -> str:
        path = self.data_dir / "local-api.addr"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc is None or self.proc.poll() is not None:
                raise EdgefleetError(f"{self.id} exited; see {self.data_dir / 'agent.log'}")
            if time.monotonic() > deadline:
                raise EdgefleetError(f"{self.id}: no local API after {timeout:.0f}s")
            time.sleep(0.2)
        return path.read_text().strip()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def stop_all(agents: list[Agent]) -> None:
    for agent in agents:
        agent.stop()
    for agent in agents:
        agent.wait()
