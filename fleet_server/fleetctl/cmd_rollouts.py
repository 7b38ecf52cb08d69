"""``fleetctl rollout ...``: create phased rollouts, watch them, pause, resume, abort, roll back.

The plan's options are sent as written (``5%``, ``200/min``, ``10m``,
``error_rate<0.01``): the server parses them, so a bad one comes back as one
clear line naming the option and, for gates, the column.
"""

from __future__ import annotations

import time
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from ..rollouts.gates import more_needed
from ..rollouts.plan import MAX_GATE_SAMPLES, duration_text
from .cli import Ctx, pass_ctx
from .output import emit, emit_items, when

LIST_COLUMNS = [
    ("id", "ID"),
    ("status", "STATUS"),
    ("artifact", "ARTIFACT"),
    ("target", "TARGET"),
    ("wave", "WAVE"),
    ("devices", "DEVICES"),
    ("succeeded", "OK"),
    ("failed", "FAILED"),
    ("created_at", "CREATED"),
]
DONE = ("succeeded", "failed", "skipped", "rolled_back")
FINAL = ("completed", "aborted", "rolled_back", "halted")


@click.group()
def rollout() -> None:
    """Phased, health-gated rollouts of models and firmware."""


@rollout.command()
@click.option("--artifact", required=True, help="name@version, e.g. digits@1.3.0:onnx-int8")
@click.option("--target", required=True, help="device selector, e.g. 'tag:site=berlin'")
@click.option("--canary", default="1", show_default=True, help="devices (5) or share (5%)")
@click.option("--waves", default="100%", show_default=True, help="cumulative, e.g. 25%,50%,100%")
@click.option("--pace", default="60/min", show_default=True, help="devices per time: 200/min")
@click.option("--jitter", default="0s", show_default=True, help="random delay per device: 30s")
@click.option("--probation", default="10m", show_default=True, help="watch window per wave")
@click.option("--gate", "gates", multiple=True, help="metric OP number, e.g. 'error_rate<0.01'")
@click.option("--no-auto-rollback", is_flag=True, help="Halt on a failed gate, revert nothing.")
@click.option("--max-failures", default=0, show_default=True, help="failed devices tolerated")
@click.option("--device-timeout", default="1h", show_default=True)
@click.option("--offline-grace", default="24h", show_default=True)
@click.option("--seed", type=int, default=None, help="order and jitter seed (reproducible)")
@click.option(
    "--gate-min-samples",
    type=click.IntRange(1, MAX_GATE_SAMPLES),
    default=20,
    show_default=True,
    help="observations (inferences, labelled answers) a gate needs from the wave",
)
@click.option(
    "--gate-timeout",
    default="30m",
    show_default=True,
    help="after probation, how long a gate short of data waits before it fails",
)
@click.option(
    "--gates-allow-no-data",
    is_flag=True,
    help="For fleets without traffic: a gate with no data passes instead of failing.",
)
@click.option(
    "--parent-margin",
    default="5pt",
    show_default=True,
    help="champion/challenger: how much less accurate than its parent the new version may be",
)
@click.option(
    "--parent-confidence",
    default="95%",
    show_default=True,
    help="champion/challenger: confidence of that test (and its power for an equal model)",
)
@click.option(
    "--shadow",
    default="0s",
    show_default=True,
    help="Before the canary switches, run the new version beside the active model for this "
    "long (e.g. 30m) and judge the shadow_* gates (shadow_agreement>=0.95).",
)
@click.option(
    "--shadow-waves",
    type=click.Choice(["canary", "all"]),
    default="canary",
    show_default=True,
    help="Which waves get a shadow step before they switch (all: every wave, not only the canary).",
)
@click.option(
    "--no-parent-gate",
    is_flag=True,
    help="Do not compare each wave with the version it replaces.",
)
@pass_ctx
def create(
    ctx: Ctx,
    artifact: str,
    target: str,
    canary: str,
    waves: str,
    pace: str,
    jitter: str,
    probation: str,
    gates: tuple[str, ...],
    no_auto_rollback: bool,
    max_failures: int,
    device_timeout: str,
    offline_grace: str,
    seed: int | None,
    gate_min_samples: int,
    gate_timeout: str,
    gates_allow_no_data: bool,
    parent_margin: str,
    parent_confidence: str,
    shadow: str,
    shadow_waves: str,
    no_parent_gate: bool,
) -> None:
    """Start a rollout: canary first, then each wave once the gates pass."""
    body: dict[str, Any] = {
        "artifact": artifact,
        "target": target,
        "canary": canary,
        "waves": waves,
        "pace": pace,
        "jitter": jitter,
        "probation": probation,
        "gates": list(gates),
        "auto_rollback": not no_auto_rollback,
        "max_failures": max_failures,
        "device_timeout": device_timeout,
        "offline_grace": offline_grace,
        "gate_min_samples": gate_min_samples,
        "gate_timeout": gate_timeout,
        "gates_allow_no_data": gates_allow_no_data,
        "vs_parent": not no_parent_gate,
        "parent_margin": parent_margin,
        "parent_confidence": parent_confidence,
        "shadow": shadow,
        "shadow_waves": shadow_waves,
    }
    if seed is not None:
        body["seed"] = seed
    out = ctx.client.post("/rollouts", body)
    if ctx.as_json:
        emit(out, as_json=True)
        return
    sizes = ", ".join(f"{w['name']} {w['size']}" for w in out["waves"])
    click.echo(f"rollout {out['id']}: {out['artifact']} to {out['devices']} devices ({sizes})")
    click.echo(f"follow it with: fleetctl rollout status {out['id']} --watch")


@rollout.command("list")
@click.option("--status", default=None, help="only rollouts in this status")
@pass_ctx
def list_(ctx: Ctx, status: str | None) -> None:
    """Rollouts, newest first."""
    emit_items(ctx.client.get("/rollouts", status=status), columns=LIST_COLUMNS, title="rollouts")


@rollout.command()
@click.argument("rollout_id")
@click.option("--watch", is_flag=True, help="Follow live until the rollout ends or halts.")
@click.option("--interval", default=1.0, show_default=True, help="seconds between refreshes")
@pass_ctx
def status(ctx: Ctx, rollout_id: str, watch: bool, interval: float) -> None:
    """Progress per wave, gate figures against thresholds, and recent events."""
    out = ctx.client.get(f"/rollouts/{rollout_id}")
    if ctx.as_json:
        emit(out, as_json=True)
        return
    console = Console()
    if not watch:
        console.print(render(out))
        return
    with Live(render(out), console=console, refresh_per_second=4) as live:
        while out["status"] not in FINAL:
            time.sleep(interval)
            out = ctx.client.get(f"/rollouts/{rollout_id}")
            live.update(render(out))
    if out["status"] != "completed":
        raise SystemExit(1)


def render(out: dict[str, Any]) -> Group:
    head = (
        f"[bold]{out['id']}[/bold]  {out['artifact']} -> {out['target']}  "
        f"[bold]{out['status']}[/bold]" + (f"  ({out['reason']})" if out.get("reason") else "")
    )
    bars = Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        auto_refresh=False,
    )
    for wave in out["waves"]:
        counts: dict[str, int] = wave["counts"]
        done = sum(n for k, n in counts.items() if k in DONE)
        detail = " ".join(f"{k}={n}" for k, n in sorted(counts.items()))
        bars.add_task(
            wave["name"],
            total=max(wave["size"], 1),
            completed=done if wave["size"] else 1,
            detail=f"{wave['state']}: {detail}" if detail else wave["state"],
        )
    gates = Table(title="gates (last evaluation per wave)", title_justify="left")
    for col in ("WAVE", "GATE", "MEASURED", "EVIDENCE", "RESULT"):
        gates.add_column(col)
    step = out.get("shadow") or {}
    for g in step.get("gates") or []:
        value = "no data" if g["value"] is None else f"{g['value']:.4g}"
        gates.add_row("shadow", g["gate"], value, _evidence(g), _result(g))
    for wave in out["waves"]:
        for g in wave["gates"] or []:
            value = "no data" if g["value"] is None else f"{g['value']:.4g}"
            gates.add_row(wave["name"], g["gate"], value, _evidence(g), _result(g))
    events = Table(title="recent events", title_justify="left")
    for col in ("WHEN", "EVENT", "DEVICE", "MESSAGE"):
        events.add_column(col)
    for e in out["events"][-8:]:
        events.add_row(when(e["ts"]), e["kind"], e["device_id"] or "", e["message"])
    parts: list[Any] = [head, bars, gates, events]
    plan = out.get("plan") or {}
    if plan.get("gates"):
        parts.insert(2, f"gates: {_evidence_rule(out)}")
    if plan.get("vs_parent"):
        parts.insert(
            2,
            f"against the parent: no worse by {plan['parent_margin'] * 100:g} points "
            f"at {plan['parent_confidence'] * 100:g}% (labels, else the label-free estimate)",
        )
    if out.get("waiting"):  # before the bars: what the rollout is waiting for
        deadline = time.strftime("%H:%M:%S", time.localtime(out["gates_deadline"]))
        parts.insert(1, f"[yellow]{out['waiting']}[/yellow] (without it they fail at {deadline})")
    return Group(*parts)


def _evidence_rule(out: dict[str, Any]) -> str:
    """How the plan judges gates that need traffic (plans from before the rule: the default)."""
    plan = out.get("plan") or {}
    if plan.get("gates_allow_no_data"):
        return "a gate with no data passes (--gates-allow-no-data)"
    needed = plan.get("gate_min_samples", 20)
    timeout = plan.get("gate_timeout_s", 1800.0)
    return (
        f"each needs {needed} observations from the wave, waited for up to {duration_text(timeout)}"
    )


def _evidence(g: dict[str, Any]) -> str:
    if g.get("samples") is None:
        return ""
    text = f"{g['samples']}/{g['needed']} {g['unit']}" if g.get("needed") else f"{g['samples']}"
    if g.get("parent_samples") is not None:
        text += f", parent {g['parent_samples']}"
        if g.get("waiting"):
            text += f": needs {more_needed(g)} more labels"
    return text


def _result(g: dict[str, Any]) -> str:
    if g.get("waiting"):
        return "[yellow]waiting for data[/yellow]"
    if g["passed"]:
        return "[green]pass[/green]" + (f" ({g['note']})" if g.get("note") else "")
    return "[red]FAIL[/red]" + (f": {g['note']}" if g.get("note") else "")


def _verb(verb: str, doc: str) -> click.Command:
    @click.argument("rollout_id")
    @pass_ctx
    def command(ctx: Ctx, rollout_id: str) -> None:
        out = ctx.client.post(f"/rollouts/{rollout_id}/{verb}")
        if ctx.as_json:
            emit(out, as_json=True)
        else:
            click.echo(f"rollout {out['id']}: {out['status']}")

    command.__doc__ = doc
    return click.command(verb)(command)


def register(cli: click.Group) -> None:
    for verb, doc in (
        ("pause", "Stop sending; devices already updating finish."),
        ("resume", "Continue a paused rollout, or re-check a halted one's gates."),
        ("abort", "Stop for good; devices already updated keep the update."),
        ("rollback", "Revert every device this rollout changed to what it ran before."),
    ):
        rollout.add_command(_verb(verb, doc))
    cli.add_command(rollout)
