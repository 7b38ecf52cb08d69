"""``fleet-server demo``: the whole loop on one machine, with embedded defaults.

Today it starts the server with SQLite and its managed mosquitto, enrolls
simulated devices with the real agent (one ``edge-agent`` process each, real
keys, real mTLS), waits for them to come online, sets a desired state and
watches every device acknowledge it.  Later capabilities (models, training,
rollouts) extend this script.  Safe to run twice: it reuses its data dir.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgefleet_contract import logs
from edgefleet_contract.errors import EdgefleetError

from .config import ApiSettings, BrokerSettings, ServerSettings
from .server import FleetServer, initialize

console = Console()
DEMO_PASSWORD = "edgefleet-demo"


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def run_demo(*, devices: int, data_dir: Path, duration: float) -> None:
    logs.configure("WARNING", "text")
    settings = ServerSettings(
        data_dir=data_dir / "server",
        api=ApiSettings(port=int(os.environ.get("DEMO_API_PORT", "8080"))),
        broker=BrokerSettings(port=int(os.environ.get("DEMO_BROKER_PORT", "8883"))),
    )
    initialize(settings, admin_password=DEMO_PASSWORD)
    server = FleetServer(settings)
    agents: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    server.start()
    try:
        api = settings.api_url
        token = httpx.post(
            f"{api}/api/v1/auth/login", json={"username": "admin", "password": DEMO_PASSWORD}
        ).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        ids = [f"demo-{i:03d}" for i in range(devices)]
        with _progress() as progress:
            task = progress.add_task("enrolling devices", total=len(ids))
            for device_id in ids:
                agents.append(
                    _start_agent(api, headers, device_id, data_dir / "agents" / device_id)
                )
                progress.advance(task)
            task = progress.add_task("waiting for devices online", total=len(ids))
            _wait(progress, task, lambda: sum(server.store.get_device(d).online for d in ids), stop)
            for device_id in ids:
                httpx.put(
                    f"{api}/api/v1/devices/{device_id}/twin/desired",
                    headers=headers,
                    json={"config": {"telemetry_interval_s": 2}},
                ).raise_for_status()
            task = progress.add_task("desired state acknowledged", total=len(ids))
            _wait(
                progress,
                task,
                lambda: sum(
                    _call("GET", f"{api}/api/v1/devices/{d}/twin", headers=headers)["status"]
                    == "in_sync"
                    for d in ids
                ),
                stop,
            )
            task = progress.add_task("telemetry batches stored", total=len(ids) * 3)
            _wait(
                progress,
                task,
                lambda: sum(
                    min(3, len(server.store.query_raw(d, since=0, until=1e11))) for d in ids
                ),
                stop,
            )
        _summary(server, ids, time.monotonic() - started)
        console.print(f"\nAPI: {api}/api/docs   login: admin / {DEMO_PASSWORD}")
        console.print(f"console: {api}/console/")
        console.print(f"fleetctl: FLEETCTL_SERVER={api} fleetctl login -u admin")
        if duration > 0:
            stop.wait(duration)
        else:
            console.print("running; Ctrl-C stops everything")
            stop.wait()
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
        for agent in agents:
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
        server.stop()
        console.print("stopped")


def _call(method: str, url: str, **kwargs: Any) -> Any:
    """One API call; failures become an EdgefleetError with the server's own words."""
    try:
        response = httpx.request(method, url, timeout=30, **kwargs)
    except httpx.HTTPError as exc:
        raise EdgefleetError(f"{method} {url} failed: {exc}") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise EdgefleetError(f"{method} {url}: {response.status_code} {detail}")
    return response.json()


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    )


def _wait(
    progress: Progress,
    task: TaskID,
    count: Callable[[], int],
    stop: threading.Event,
    timeout: float = 120,
) -> None:
    info = next(t for t in progress.tasks if t.id == task)
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        done = count()
        progress.update(task, completed=done)
        if done >= (info.total or 0):
            return
        if time.monotonic() > deadline:
            raise EdgefleetError(f"demo step timed out: {info.description}")
        time.sleep(0.2)
    raise KeyboardInterrupt


def _start_agent(
    api: str, headers: dict[str, str], device_id: str, data_dir: Path
) -> subprocess.Popen[bytes]:
    if not (data_dir / "identity" / "enrollment.json").exists():
        r = httpx.post(
            f"{api}/api/v1/devices",
            headers=headers,
            json={"id": device_id, "tags": {"site": "demo"}},
        )
        if r.status_code == 409:  # device exists from an earlier run whose files are gone
            r = httpx.post(f"{api}/api/v1/devices/{device_id}/token", headers=headers)
        r.raise_for_status()
        subprocess.run(
            [
                _bin("edge-agent"),
                "enroll",
                "--server",
                api,
                "--token",
                r.json()["token"],
                "--data-dir",
                str(data_dir),
                "--force",
            ],
            check=True,
            capture_output=True,
        )
    log = (data_dir / "agent.log").open("ab")
    return subprocess.Popen(
        [_bin("edge-agent"), "run", "--data-dir", str(data_dir)],
        env={**os.environ, "EDGE_AGENT_TELEMETRY_INTERVAL_S": "1", **_agent_model_env()},
        stdout=log,
        stderr=log,
        start_new_session=True,
    )


def _agent_model_env() -> dict[str, str]:
    """Demo devices serve the shipped CNN on their own local API port (several run here)."""
    env = {"EDGE_AGENT_LOCAL_API__PORT": "0"}
    model = Path(__file__).resolve().parent.parent / "models/dist/digits-cnn-1.0.0-onnx-int8.efpkg"
    if model.exists():
        env["EDGE_AGENT_MODEL"] = str(model)
    return env


def _summary(server: FleetServer, ids: list[str], elapsed: float) -> None:
    table = Table(title="fleet")
    for col in ("device", "online", "cert expires", "batches stored", "twin"):
        table.add_column(col)
    for device_id in ids:
        d = server.store.get_device(device_id)
        batches = len(server.store.query_raw(device_id, since=0, until=1e11, limit=100_000))
        twin = (
            "in sync"
            if d.reported and d.desired and d.reported.desired_version >= d.desired.version
            else "pending"
        )
        table.add_row(
            device_id,
            "yes" if d.online else "no",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(d.cert_not_after or 0)),
            str(batches),
            twin,
        )
    console.print(table)
    console.print(f"{len(ids)} devices enrolled and online in {elapsed:.1f}s")
