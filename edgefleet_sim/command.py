"""``fleetctl simulate``: a fleet of simulated devices running the real agent code."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fleet_server.fleetctl.cli import Ctx, pass_ctx
from fleet_server.fleetctl.client import Client, load_login

from .pool import WorkerPool
from .protocol import MAX_PER_PROCESS, Job, device_ids
from .view import Watch

HELP = """Run DEVICES simulated devices against a fleet server.

\b
Real: enrollment (REST device record + one-time token, a key pair and CSR per
device, a certificate from the server), one MQTT connection per device with its
own certificate through the managed broker (mTLS, ACLs, Last Will), and the
whole agent daemon per device: spool, commands (set_desired acks), telemetry
with the inference recorder, TUF-verified updates into A/B slots, federated
training on the labelled samples.
Simplified: sensors replay scikit-learn digits (optionally shifted with
--shift to trigger drift alerts); loaded models are shared per package version
between the devices of a process; no local prediction API or firmware.

The devices run in worker processes of at most --per-process devices each
(paho's select() loop cannot use descriptors above 1023); this command enrolls
them, starts the workers and adds up what they report.  Identities persist in
--data-dir: a second run reuses them (no re-enrollment).  Ctrl-C (or
--duration) stops every device cleanly; the server sees them go
offline; a second Ctrl-C kills the workers at once.  See
docs/operations.md, "Fleet simulator"."""


def _default_model() -> Path | None:
    from fleet_server.factory_models import DIST

    path = DIST / "digits-1.0.0-onnx-int8.efpkg"
    return path if path.is_file() else None


@click.command(help=HELP)
@click.option("--devices", "count", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option(
    "--per-process",
    type=click.IntRange(1, MAX_PER_PROCESS),
    default=MAX_PER_PROCESS,
    show_default=True,
    help=f"Devices per worker process (at most {MAX_PER_PROCESS}: paho's select() loop).",
)
@click.option("--server", default=None, help="Fleet server URL (default: the one logged in to).")
@click.option(
    "--telemetry-interval",
    type=click.FloatRange(0.05, 3600),
    default=10.0,
    show_default=True,
    help="Seconds between telemetry batches per device.",
)
@click.option(
    "--model",
    "model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Model package each device boots with (default: the shipped digits-1.0.0 ONNX int8).",
)
@click.option("--no-model", is_flag=True, help="Boot without a model (no inference stats).")
@click.option(
    "--probation",
    "probation_s",
    type=click.FloatRange(0, 7 * 86400),
    default=600.0,
    show_default=True,
    help="Seconds a device keeps an installed update on probation before committing it "
    "(the agent's updates.probation_s; rollouts wait for commits).",
)
@click.option(
    "--duration",
    type=click.FloatRange(0),
    default=0.0,
    help="Seconds to run once all are online; 0 runs until Ctrl-C.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0),
    default=0.5,
    show_default=True,
    help="Sensor readings per second per device.",
)
@click.option(
    "--feedback",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Fraction of readings whose ground truth is fed back (training samples).",
)
@click.option(
    "--shift",
    type=click.FloatRange(-1, 1),
    default=0.0,
    show_default=True,
    help="Brightness shift of the readings (fraction of full scale): drift.",
)
@click.option(
    "--shift-after",
    type=click.FloatRange(0),
    default=0.0,
    help="Seconds after start before --shift applies.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path.home() / ".local/share/edgefleet/simulator",
    show_default=True,
    help="Where the simulated devices' identities, spools and slots live.",
)
@click.option(
    "--prefix",
    default="sim",
    show_default=True,
    help="Device ids are PREFIX-00000...; also their tag simulated=PREFIX.",
)
@click.option(
    "--online-timeout",
    type=click.FloatRange(1),
    default=600.0,
    show_default=True,
    help="Give up waiting for every device to be online after this many seconds.",
)
@pass_ctx
def simulate(
    ctx: Ctx,
    count: int,
    per_process: int,
    server: str | None,
    telemetry_interval: float,
    model: Path | None,
    no_model: bool,
    probation_s: float,
    duration: float,
    rate: float,
    feedback: float,
    shift: float,
    shift_after: float,
    data_dir: Path,
    prefix: str,
    online_timeout: float,
) -> None:
    from .enroll import enroll_all  # runs agent code: loaded only when the command runs

    login = load_login()
    url = (server or login.require_server()).rstrip("/")
    client = Client(url, login.token) if server else ctx.client
    package = None if no_model else (model or _default_model())
    root = data_dir / url.split("://")[-1].replace(":", "_").replace("/", "_")
    processes = math.ceil(count / per_process)
    job = Job(
        root=str(root),
        prefix=prefix,
        first=0,
        count=per_process,
        interval=telemetry_interval,
        model=str(package) if package else None,
        probation_s=probation_s,
        rate=rate,
        feedback=feedback,
        shift=shift,
        shift_after=shift_after,
        seed=0,
    )
    pool = WorkerPool(_split(job, count), root / "logs")
    stop = _stop_on_signals(pool)

    def online() -> int:
        page = client.get("/devices", selector=f"tag:simulated={prefix} and online", limit=1)
        return int(page["total"])

    enrolled_now = 0

    def enroll(advance: Callable[[int], None]) -> None:
        nonlocal enrolled_now
        ids = device_ids(prefix, 0, count)
        enrolled_now = enroll_all(client, url, root, ids, tag=prefix, advance=advance, halted=stop)

    watch = Watch(pool, count, online, stop)
    started = time.monotonic()
    summary: dict[str, Any] = {"devices": count, "processes": processes, "server": url}
    try:
        watch.bring_up(enroll, online_timeout)
        summary["time_to_all_online_s"] = watch.all_online_s
        summary["all_online_at"] = time.time()
        if not stop.is_set():
            watch.run(duration)
    finally:
        summary["stopping_at"] = time.time()
        watch.shut_down()
        total = pool.total()
        summary.update(
            enrolled_now=enrolled_now,
            reused=count - enrolled_now,
            telemetry_batches=total.telemetry,
            desired_applied=total.desired,
            readings=total.readings,
            errors=total.errors,
            wall_s=round(time.monotonic() - started, 1),
        )
        client.close()
    line = " ".join(f"{k}={v}" for k, v in summary.items())
    click.echo(json.dumps(summary) if ctx.as_json else line)


def _stop_on_signals(pool: WorkerPool) -> threading.Event:
    """Set on the first Ctrl-C or SIGTERM; a second one kills the workers at once."""
    stop = threading.Event()

    def interrupt(*_: Any) -> None:
        if stop.is_set():  # a second Ctrl-C: no more waiting for clean disconnects
            pool.kill()
        stop.set()

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    return stop


def _split(job: Job, count: int) -> list[Job]:
    """``count`` devices in workers of at most ``job.count`` each, every one with its own seed."""
    per_process = job.count
    return [
        dataclasses.replace(job, first=first, count=min(per_process, count - first), seed=k)
        for k, first in enumerate(range(0, count, per_process))
    ]


def register(cli: click.Group) -> None:
    cli.add_command(simulate)
