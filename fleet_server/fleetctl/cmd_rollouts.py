"""``fleetctl rollout ...``: create phased rollouts, watch them, pause, resume, abort, roll back.

The plan's options are sent as written (``5%``, ``200/min``, ``10m``,
``error_rate<0.01``): the server parses them, so a bad one comes back as one
clear line naming the option and, for gates, the column.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from ..rollouts.gates import more_needed
from ..rollouts.plan import FLAGS, PlanSpec, duration_text, int_bounds, option_word
from .cli import Ctx, pass_ctx
from .output import emit, emit_items, report, when

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


def plan_options(command: Callable[..., None]) -> Callable[..., None]:
    """One option per :class:`PlanSpec` field (its word, default and description), so the
    CLI, the API and a run's ``--rollout`` share one vocabulary."""
    for name, info in reversed(PlanSpec.model_fields.items()):
        if name == "target":
            continue
        word = f"--{option_word(name)}"
        if name in FLAGS:
            option = click.option(
                word,
                name,
                is_flag=True,
                flag_value=not info.default,
                default=info.default,
                help=FLAGS[name][1],
            )
        elif name == "gates":
            option = click.option(word, name, multiple=True, help=info.description)
        elif name == "seed":
            option = click.option(word, name, type=int, default=None, help=info.description)
        elif info.annotation is int:
            option = click.option(
                word,
                name,
                type=click.IntRange(*int_bounds(name)),
                default=info.default,
                show_default=True,
                help=info.description,
            )
        else:
            option = click.option(
                word, name, default=info.default, show_default=True, help=info.description
            )
        command = option(command)
    return command


@rollout.command()
@click.option("--artifact", required=True, help="name@version, e.g. digits@1.3.0:onnx-int8")
@click.option("--target", required=True, help="device selector, e.g. 'tag:site=berlin'")
@plan_options
@pass_ctx
def create(ctx: Ctx, /, artifact: str, target: str, **plan: Any) -> None:
    """Start a rollout: canary first, then each wave once the gates pass."""
    body: dict[str, Any] = {"artifact": artifact, "target": target, **plan}
    body["gates"] = list(plan["gates"])
    if plan["seed"] is None:
        del body["seed"]
    out = ctx.client.post("/rollouts", body)
    sizes = ", ".join(f"{w['name']} {w['size']}" for w in out["waves"])
    report(
        out,
        f"rollout {out['id']}: {out['artifact']} to {out['devices']} devices ({sizes})",
        f"follow it with: fleetctl rollout status {out['id']} --watch",
    )


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
        report(out, f"rollout {out['id']}: {out['status']}")

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
