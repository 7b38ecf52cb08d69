"""``fleetctl train ...``: federated training runs."""

from __future__ import annotations

import time
from typing import Any, get_args

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..federation.spec import RunSpec, StrategyName
from .cli import Ctx, pass_ctx
from .output import emit, emit_items

RUN_COLUMNS = [
    ("id", "RUN"),
    ("status", "STATUS"),
    ("model", "MODEL"),
    ("strategy", "STRATEGY"),
    ("progress", "ROUNDS"),
    ("created_by", "BY"),
    ("created_at", "CREATED"),
    ("detail", "DETAIL"),
]
ROUND_COLUMNS = [
    ("round", "ROUND"),
    ("accuracy", "ACCURACY"),
    ("loss", "LOSS"),
    ("device_eval", "DEVICE EVAL"),
    ("cohorts", "BY COHORT"),
    ("eligible", "ELIGIBLE"),
    ("participants", "PARTICIPANTS"),
    ("failures", "FAILURES"),
    ("rejected", "REJECTED"),
    ("bytes", "BYTES OUT/IN"),
    ("wall_s", "WALL S"),
]
STRATEGIES = get_args(StrategyName)
FINAL = ("completed", "failed", "stopped")


@click.group()
def train() -> None:
    """Federated training runs on the devices' own data."""


@train.command("start")
@click.option("--model", required=True, help="Model name, e.g. digits.")
@click.option("--target", default="all", show_default=True, help="Device selector.")
@click.option(
    "--from-version",
    default=None,
    help="The model version to start from (default: the newest trainable one).",
)
@click.option("--rounds", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default=None,
    help=f"Aggregation (default: {RunSpec.model_fields['strategy'].default}; fedbuff is "
    "asynchronous).",
)
@click.option("--min-clients", type=click.IntRange(1), default=2, show_default=True)
@click.option("--fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0)
@click.option("--round-timeout", type=click.FloatRange(0, min_open=True), default=120.0)
@click.option(
    "--over-select",
    type=click.FloatRange(0, 1),
    help="Sample this much more (0.3 = 30%) and close each round when enough updates are in.",
)
@click.option(
    "--round-deadline",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Seconds after which a round closes with what arrived, if that meets the quorum.",
)
@click.option(
    "--server-lr",
    type=click.FloatRange(0, 10, min_open=True),
    default=None,
    help="Server optimiser step (fedadam, fedyogi, fedadagrad, fedavgm, fedbuff); "
    "default: per strategy.",
)
@click.option("--server-momentum", type=click.FloatRange(0, 1, max_open=True), help="fedavgm.")
@click.option("--buffer-size", type=click.IntRange(1), help="fedbuff: updates per aggregation.")
@click.option("--max-staleness", type=click.IntRange(0), help="fedbuff: oldest usable version.")
@click.option("--concurrency", type=click.IntRange(1), default=None, help="fedbuff: devices busy.")
@click.option("--epochs", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--lr", type=click.FloatRange(0, 10, min_open=True), default=0.1, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--mu", type=click.FloatRange(0, 100), default=None, help="FedProx proximal mu.")
@click.option("--min-new-samples", type=click.IntRange(0), default=0, show_default=True)
@click.option("--allow-battery", is_flag=True, help="Let devices on battery train.")
@click.option("--model-version", default=None, help="Only devices running this version.")
@click.option("--central-dp", is_flag=True, help="Server-side clipping + noise (Flower).")
@click.option("--noise", type=click.FloatRange(0), default=0.1, show_default=True)
@click.option("--clip", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True)
@click.option("--local-dp-epsilon", type=click.FloatRange(0), default=0.0, help="> 0: LocalDpMod.")
@click.option("--secagg", is_flag=True, help="Secure aggregation (SecAgg+).")
@click.option("--rollout", default=None, help="Rollout plan for the candidate if it wins.")
@click.option(
    "--client-evaluate",
    is_flag=True,
    help="Federated evaluation on samples each device holds out (every 5th, never sent).",
)
@click.option(
    "--evaluate-every",
    type=click.IntRange(1, 1000),
    default=None,
    help="Federated evaluation every k rounds and the last (implies --client-evaluate).",
)
@click.option(
    "--evaluate-by",
    default=None,
    help="Device tag whose values group the federated figures (implies --client-evaluate).",
)
@click.option(
    "--accept-by",
    type=click.Choice(["auto", "server", "federated"]),
    default=None,
    help="Judge the candidate on the server's held-out set or the devices' (auto: the "
    "devices' when the server holds no labelled data for the model).",
)
@click.option(
    "--accept-margin",
    type=click.FloatRange(0, 1),
    default=None,
    help="Federated judging: the candidate may trail the parent by at most this.",
)
@pass_ctx
def start(ctx: Ctx, /, **o: Any) -> None:
    """Start a federated training run of a model on the devices a selector chooses."""
    body: dict[str, Any] = {
        "model": o["model"],
        "target": o["target"],
        "rounds": o["rounds"],
        "min_clients": o["min_clients"],
        "fraction": o["fraction"],
        "round_timeout_s": o["round_timeout"],
        "local": {
            "epochs": o["epochs"],
            "lr": o["lr"],
            "batch_size": o["batch_size"],
            "proximal_mu": o["mu"]
            if o["mu"] is not None
            else (0.01 if o["strategy"] == "fedprox" else 0.0),
        },
        "eligibility": {
            "min_new_samples": o["min_new_samples"],
            "allow_battery": o["allow_battery"],
            "model_version": o["model_version"],
        },
        "privacy": {
            "central_dp": o["central_dp"],
            "noise_multiplier": o["noise"],
            "clipping_norm": o["clip"],
            "local_dp_epsilon": o["local_dp_epsilon"],
        },
        "secagg": o["secagg"],
        "rollout": o["rollout"],
        "client_evaluate": bool(
            o["client_evaluate"]
            or o["evaluate_every"]
            or o["evaluate_by"]
            or o["accept_by"] == "federated"
        ),
    }
    optional = {
        "strategy": "strategy",
        "from_version": "parent_version",
        "over_select": "over_select",
        "round_deadline": "round_deadline_s",
        "server_lr": "server_lr",
        "server_momentum": "server_momentum",
        "buffer_size": "buffer_size",
        "max_staleness": "max_staleness",
        "concurrency": "concurrency",
        "evaluate_every": "evaluate_every",
        "evaluate_by": "evaluate_by",
        "accept_by": "accept_by",
        "accept_margin": "accept_margin",
    }
    # Unset options are left out: the server's run spec holds every default.
    body.update({key: o[opt] for opt, key in optional.items() if o[opt] is not None})
    run = ctx.client.post("/training/runs", body)
    if ctx.as_json:
        emit(run, as_json=True)
    else:
        spec = run["spec"]
        click.echo(
            f"training run {run['id']} started ({spec['rounds']} rounds from "
            f"{spec['model']} {spec.get('parent_version')})"
        )


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    spec = run["spec"]
    return {
        **run,
        "model": spec.get("model"),
        "strategy": spec.get("strategy"),
        "progress": f"{run['completed_rounds']}/{spec.get('rounds')}",
    }


@train.command("list")
@click.option("--status", default=None)
@pass_ctx
def list_runs(ctx: Ctx, status: str | None) -> None:
    """Federated training runs, newest first, with their best round."""
    params = {"status": status} if status else {}
    runs = ctx.client.get("/training/runs", **params)
    emit_items(runs, columns=RUN_COLUMNS, title="training runs", row=_summary)


def _eligible(eligibility: dict[str, int]) -> str:
    """``97 (offline 2, on_battery 1)``: who could train and why the others could not."""
    if not eligibility:
        return "-"
    out = [f"{k} {v}" for k, v in sorted(eligibility.items()) if k != "eligible"]
    count = str(eligibility.get("eligible", 0))
    return f"{count} ({', '.join(out)})" if out else count


def _device_eval(evaluation: dict[str, Any]) -> str:
    """Accuracy on the devices' own held-out samples (federated evaluation), if run; the
    parent's beside it on the round that evaluated the parent too."""
    parent = evaluation.get("parent") or {}
    before = f" (parent {parent['accuracy']:.4f})" if parent.get("accuracy") is not None else ""
    if evaluation.get("accuracy") is None:
        return f"-{before}"
    return f"{evaluation['accuracy']:.4f} ({len(evaluation.get('devices', {}))} devices){before}"


def _cohorts(evaluation: dict[str, Any]) -> str:
    """``berlin 0.9120 (2), paris 0.8800 (2)``: federated accuracy per cohort (devices)."""
    cohorts = evaluation.get("cohorts") or {}
    shown = [
        f"{name} {c['accuracy']:.4f} ({c['devices']})"
        for name, c in cohorts.items()
        if c.get("accuracy") is not None
    ]
    return ", ".join(shown) or "-"


def _rounds(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            **r,
            "eligible": _eligible(r.get("eligibility") or {}),
            "device_eval": _device_eval(r.get("evaluation") or {}),
            "cohorts": _cohorts(r.get("evaluation") or {}),
            "participants": len(r["participants"]),
            "bytes": f"{r['bytes_out']}/{r['bytes_in']}",
            "accuracy": round(r["accuracy"], 4) if r["accuracy"] is not None else None,
            "loss": round(r["loss"], 4) if r["loss"] is not None else None,
            "wall_s": round(r["wall_s"], 2),
        }
        for r in run.get("rounds") or []
    ]


def _show(run: dict[str, Any]) -> None:
    emit(_rounds(run), as_json=False, columns=ROUND_COLUMNS, title=f"run {run['id']}")
    console = Console()
    for r in run.get("rounds") or []:
        failed = sorted((r.get("failed") or {}).items())
        for device_id, why in failed[:10]:
            console.print(f"round {r['round']}: {device_id} gave no update: {why}", markup=False)
        if len(failed) > 10:
            console.print(f"round {r['round']}: and {len(failed) - 10} more devices", markup=False)
    line = f"{run['status']}"
    if run["detail"]:
        line += f": {run['detail']}"
    result = run.get("result") or {}
    judged = result.get("federated_acceptance")
    if judged:
        verdict = "accepted" if judged.get("accepted") else "refused"
        line += f" — federated judging: {verdict}: {judged.get('reason')}"
    elif result.get("accuracy") is not None:
        line += (
            f" — candidate {result.get('version')} held-out accuracy "
            f"{result['accuracy']:.4f} vs parent {result.get('baseline_accuracy', 0):.4f}"
            f"{' (handed to the registry)' if result.get('handed_over') else ''}"
        )
    Console().print(line)


@train.command("status")
@click.argument("run_id")
@click.option("--watch", is_flag=True, help="Follow the run until it ends.")
@click.option("--interval", type=click.FloatRange(0.1), default=2.0, show_default=True)
@pass_ctx
def status(ctx: Ctx, run_id: str, watch: bool, interval: float) -> None:
    """Per-round loss/accuracy, participants, failures and bytes."""
    run = ctx.client.get(f"/training/runs/{run_id}")
    if watch and run["status"] not in FINAL:
        total = int(run["spec"].get("rounds", 1))
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        ) as progress:
            task = progress.add_task(f"run {run_id}", total=total, info="")
            while run["status"] not in FINAL:
                last = (run.get("rounds") or [{}])[-1]
                info = f"acc {last['accuracy']:.3f}" if last.get("accuracy") is not None else ""
                progress.update(task, completed=run["completed_rounds"], info=info)
                time.sleep(interval)
                run = ctx.client.get(f"/training/runs/{run_id}")
            progress.update(task, completed=run["completed_rounds"])
    if ctx.as_json:
        emit(run, as_json=True)
    else:
        _show(run)


@train.command("stop")
@click.argument("run_id")
@pass_ctx
def stop(ctx: Ctx, run_id: str) -> None:
    """Stop a running federated run; rounds already done are kept."""
    run = ctx.client.post(f"/training/runs/{run_id}/stop")
    emit(run, as_json=True) if ctx.as_json else click.echo(f"training run {run_id} {run['status']}")


def register(cli: click.Group) -> None:
    cli.add_command(train)
