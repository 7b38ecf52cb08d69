"""``fleetctl telemetry ...`` and ``fleetctl commands ...``."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import click

from edgefleet_contract.errors import EdgefleetError

from .cli import Ctx, pass_ctx
from .output import emit, emit_items

ROLLUP_COLUMNS = [
    ("minute", "MINUTE"),
    ("devices", "DEVICES"),
    ("batches", "BATCHES"),
    ("inferences", "INFERENCES"),
    ("error_rate", "ERR RATE"),
    ("latency_p95_ms", "P95 MS"),
    ("cpu_percent", "CPU %"),
    ("drift_max", "DRIFT"),
    ("spool_dropped", "DROPPED"),
]


def ago_seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m is None:
        raise click.BadParameter(f"{text!r}: use a duration like 30m, 6h or 2d")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@click.group()
def telemetry() -> None:
    """Query device telemetry."""


@telemetry.command("show")
@click.argument("device_id")
@click.option("--since", default="1h", show_default=True, help="How far back (30m, 6h, 2d).")
@click.option("--raw", is_flag=True, help="Raw batches instead of per-minute rollups.")
@pass_ctx
def show(ctx: Ctx, device_id: str, since: str, raw: bool) -> None:
    """Per-minute telemetry of one device (inferences, errors, latency, drift)."""
    now = time.time()
    out = ctx.client.get(
        f"/devices/{device_id}/telemetry",
        since=now - ago_seconds(since),
        until=now,
        resolution="raw" if raw else "minute",
    )
    if ctx.as_json or raw:
        emit(out, as_json=True)
    else:
        emit(out["rollups"], as_json=False, columns=ROLLUP_COLUMNS, title=device_id)


@telemetry.command("aggregate")
@click.option("--selector", "-s", default="all", show_default=True)
@click.option("--since", default="1h", show_default=True)
@pass_ctx
def aggregate(ctx: Ctx, selector: str, since: str) -> None:
    """Per-minute telemetry summed over the devices a selector chooses."""
    now = time.time()
    out = ctx.client.get(
        "/telemetry/aggregate", selector=selector, since=now - ago_seconds(since), until=now
    )
    emit(
        out if ctx.as_json else out["rollups"],
        as_json=ctx.as_json,
        columns=ROLLUP_COLUMNS,
        title=selector,
    )


@click.group()
def commands() -> None:
    """Send commands to a device and see their answers."""


FINAL = ("done", "rejected", "failed")
"""A device's answers that end a command (``accepted`` is on the way there)."""


@commands.command("send")
@click.argument("device_id")
@click.argument("name")
@click.option("--args", "args_json", default="{}", help="JSON object of arguments.")
@click.option("--wait", is_flag=True, help="Wait for the device's answer and print it.")
@click.option(
    "--timeout", default=30.0, show_default=True, help="Seconds --wait waits for an answer."
)
@pass_ctx
def send(ctx: Ctx, device_id: str, name: str, args_json: str, wait: bool, timeout: float) -> None:
    """Send a command to a device; with --wait, print the device's answer.

    The server refuses a command the device has not declared it knows.  Without
    --wait the answer shows up in `fleetctl commands list`.  With it, the exit code
    is 0 when the device answered "done" and 1 otherwise.
    """
    try:
        args = json.loads(args_json)
    except ValueError as exc:
        raise click.BadParameter(f"--args is not JSON: {exc}") from None
    sent = ctx.client.post(f"/devices/{device_id}/commands", {"name": name, "args": args})
    if not wait:
        emit(sent, as_json=ctx.as_json)
        return
    answer = _answer(ctx, device_id, sent["id"], timeout)
    if answer is None:
        raise EdgefleetError(
            f"no answer from {device_id} within {timeout:g} s (command {sent['id']}); "
            "an offline device gets it when it reconnects (fleetctl commands list)"
        )
    if ctx.as_json:
        emit(answer, as_json=True)
    else:
        detail = f": {answer['detail']}" if answer.get("detail") else ""
        click.echo(f"{device_id} answered {name} ({answer['id']}): {answer['status']}{detail}")
    if answer["status"] != "done":
        raise SystemExit(1)


def _answer(ctx: Ctx, device_id: str, command_id: str, timeout: float) -> dict[str, Any] | None:
    """Poll the command's record until the device's final answer, or None at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        for record in ctx.client.get(f"/devices/{device_id}/commands", limit=50)["items"]:
            if record["id"] == command_id and record["status"] in FINAL:
                return dict(record)
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


@commands.command("list")
@click.argument("device_id")
@pass_ctx
def list_(ctx: Ctx, device_id: str) -> None:
    """Commands sent to a device, newest first, with the device's answers."""
    emit_items(
        ctx.client.get(f"/devices/{device_id}/commands"),
        title="commands",
        columns=[
            ("id", "ID"),
            ("name", "NAME"),
            ("created_at", "SENT"),
            ("actor", "BY"),
            ("status", "STATUS"),
            ("detail", "DETAIL"),
        ],
    )


def register(cli: click.Group) -> None:
    cli.add_command(telemetry)
    cli.add_command(commands)
