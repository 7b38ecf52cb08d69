"""``fleetctl devices ...`` and ``fleetctl twin ...``."""

from __future__ import annotations

import json
from typing import Any

import click

from .cli import Ctx, pass_ctx
from .output import emit, report

DEVICE_COLUMNS = [
    ("id", "ID"),
    ("name", "NAME"),
    ("state", "STATE"),
    ("online", "ONLINE"),
    ("model", "MODEL"),
    ("firmware", "FIRMWARE"),
    ("twin", "TWIN"),
    ("tags", "TAGS"),
    ("last_seen", "LAST SEEN"),
]


def _tags(pairs: tuple[str, ...]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: tags are written key=value")
        tags[key] = value
    return tags


@click.group()
def devices() -> None:
    """Enroll, list, tag, revoke and decommission devices."""


@devices.command("list")
@click.option("--selector", "-s", default=None, help="e.g. 'tag:site=berlin and online'")
@click.option("--limit", default=100, show_default=True)
@click.option("--offset", default=0)
@pass_ctx
def list_(ctx: Ctx, selector: str | None, limit: int, offset: int) -> None:
    """List devices (optionally those a selector chooses)."""
    page = ctx.client.get("/devices", selector=selector, limit=limit, offset=offset)
    if ctx.as_json:
        emit(page, as_json=True)
        return
    emit(
        page["items"],
        as_json=False,
        columns=DEVICE_COLUMNS,
        title=f"{page['total']} devices (showing {len(page['items'])} from {offset})",
    )


@devices.command()
@click.argument("device_id")
@click.option("--name", default=None)
@click.option("--tag", "tags", multiple=True, help="key=value, repeatable")
@pass_ctx
def add(ctx: Ctx, device_id: str, name: str | None, tags: tuple[str, ...]) -> None:
    """Create a device record and print its one-time enrollment token."""
    out = ctx.client.post("/devices", {"id": device_id, "name": name, "tags": _tags(tags)})
    _print_token(out)


@devices.command()
@click.argument("device_id")
@pass_ctx
def token(ctx: Ctx, device_id: str) -> None:
    """Issue a new enrollment token (the previous one stops working)."""
    _print_token(ctx.client.post(f"/devices/{device_id}/token"))


def _print_token(out: dict[str, object]) -> None:
    report(
        out,
        f"device {out['device_id']}: enrollment token (shown once, single use):",
        f"  {out['token']}",
        "on the device, run:",
        f"  {out['enroll_command']}",
    )


@devices.command()
@click.argument("device_id")
@pass_ctx
def show(ctx: Ctx, device_id: str) -> None:
    """Show one device."""
    emit(ctx.client.get(f"/devices/{device_id}"), as_json=ctx.as_json, columns=DEVICE_COLUMNS)


@devices.command()
@click.argument("device_id")
@click.argument("pairs", nargs=-1, required=True)
@pass_ctx
def tag(ctx: Ctx, device_id: str, pairs: tuple[str, ...]) -> None:
    """Set tags (key=value); an empty value removes the tag."""
    current = dict(ctx.client.get(f"/devices/{device_id}")["tags"])
    for key, value in _tags(pairs).items():
        if value:
            current[key] = value
        else:
            current.pop(key, None)
    out = ctx.client.patch(f"/devices/{device_id}", {"tags": current})
    emit(out, as_json=ctx.as_json, columns=DEVICE_COLUMNS)


@devices.command()
@click.argument("device_id")
@click.argument("groups", nargs=-1)
@pass_ctx
def groups(ctx: Ctx, device_id: str, groups: tuple[str, ...]) -> None:
    """Set the device's groups (none given: remove it from all groups)."""
    out = ctx.client.patch(f"/devices/{device_id}", {"groups": list(groups)})
    emit(out, as_json=ctx.as_json, columns=DEVICE_COLUMNS)


@devices.command()
@click.argument("device_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def revoke(ctx: Ctx, device_id: str, yes: bool) -> None:
    """Revoke a device: its certificates go on the CRL and it cannot enroll again."""
    if _confirmed(yes, f"revoke {device_id}? it will be cut off from the broker"):
        out = ctx.client.post(f"/devices/{device_id}/revoke")
        emit(out, as_json=ctx.as_json, columns=DEVICE_COLUMNS)
    else:
        click.echo(f"{device_id} not revoked")


@devices.command()
@click.argument("device_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def delete(ctx: Ctx, device_id: str, yes: bool) -> None:
    """Decommission a device: revoke it, keep its history, free its id for a replacement.

    Its certificates stay on the CRL; `fleetctl devices add` with the same id then
    makes a new device (a new enrollment token) with that history before it.
    """
    if _confirmed(
        yes, f"decommission {device_id}? it is revoked and its id freed for a replacement"
    ):
        out = ctx.client.delete(f"/devices/{device_id}")
        report(out, f"{device_id} decommissioned: revoked, history kept, id free to add again")
    else:
        click.echo(f"{device_id} not decommissioned")


def _confirmed(yes: bool, question: str) -> bool:
    """``--yes`` given, or the operator answered yes: a step that cuts a device off is
    never taken on a stray command line."""
    return yes or click.confirm(question)


@click.group()
def twin() -> None:
    """Desired and reported state."""


@twin.command("show")
@click.argument("device_id")
@pass_ctx
def twin_show(ctx: Ctx, device_id: str) -> None:
    """Show what a device should run, what it reports, and whether they agree."""
    out = ctx.client.get(f"/devices/{device_id}/twin")
    report(out, *_twin_lines(device_id, out))


def _twin_lines(device_id: str, out: dict[str, Any]) -> list[str]:
    desired, reported = out["desired"] or {}, out["reported"] or {}
    refusal = out.get("refusal")
    return [
        f"{device_id}: {out['status']}",
        *([f"  REFUSED by the device (v{desired.get('version')}): {refusal}"] if refusal else []),
        f"  desired (v{desired.get('version', 0)}):",
        f"    model:    {_artifact(desired.get('model'))}",
        f"    firmware: {_artifact(desired.get('firmware'))}",
        f"    config:   {_pairs(desired.get('config'))}",
        f"  reported (applied v{reported.get('desired_version', 0)}):",
        f"    model:    {_artifact(reported.get('model'))}",
        f"    firmware: {_artifact(reported.get('firmware'))}",
        f"    health:   {reported.get('health', '-')}",
    ]


@twin.command("set")
@click.argument("device_id")
@click.option("--model", "model", default=None, metavar="NAME@VERSION")
@click.option("--firmware", "firmware", default=None, metavar="NAME@VERSION")
@click.option("--config", "pairs", multiple=True, help="key=value, repeatable; key= removes")
@click.option("--clear-model", is_flag=True, help="Stop asking for a particular model.")
@click.option("--clear-firmware", is_flag=True, help="Stop asking for a particular firmware.")
@pass_ctx
def twin_set(
    ctx: Ctx,
    device_id: str,
    model: str | None,
    firmware: str | None,
    pairs: tuple[str, ...],
    clear_model: bool,
    clear_firmware: bool,
) -> None:
    """Change the desired state; what is not mentioned stays as it is.

    The server stores it under a new version and tells the device over MQTT
    (or when it is next online).
    """
    if not (model or firmware or pairs or clear_model or clear_firmware):
        raise click.UsageError("say what to change: --model, --firmware or --config")
    current = ctx.client.get(f"/devices/{device_id}/twin")["desired"] or {}
    body: dict[str, Any] = {
        "model": None if clear_model else _keep(current.get("model")),
        "firmware": None if clear_firmware else _keep(current.get("firmware")),
        "config": dict(current.get("config") or {}),
    }
    if model:
        body["model"] = _name_at_version(model, "--model")
    if firmware:
        body["firmware"] = _name_at_version(firmware, "--firmware")
    for key, value in _tags(pairs).items():
        if value:
            body["config"][key] = _scalar(value)
        else:
            body["config"].pop(key, None)
    out = ctx.client.put(f"/devices/{device_id}/twin/desired", body)
    report(out, f"{device_id}: desired v{out['desired']['version']}, {out['status']}")


def _name_at_version(text: str, option: str) -> dict[str, str]:
    name, sep, version = text.rpartition("@")
    if not sep or not name or not version:
        raise click.BadParameter(
            f"{text!r}: write NAME@VERSION, e.g. digits@1.2.0", param_hint=option
        )
    return {"name": name, "version": version}


def _keep(artifact: dict[str, Any] | None) -> dict[str, Any] | None:
    if not artifact:
        return None
    return {k: artifact[k] for k in ("name", "version", "target") if k in artifact}


def _scalar(value: str) -> Any:
    """``5`` -> 5, ``0.5`` -> 0.5, ``true`` -> True; anything else stays text."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, bool | int | float) else value


def _artifact(artifact: dict[str, Any] | None) -> str:
    if not artifact:
        return "-"
    return f"{artifact.get('name')}@{artifact.get('version')}"


def _pairs(mapping: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (mapping or {}).items()) or "-"


def register(cli: click.Group) -> None:
    cli.add_command(devices)
    cli.add_command(twin)
