"""``fleetctl devices ...`` and ``fleetctl twin ...``."""

from __future__ import annotations

import click

from .cli import Ctx, pass_ctx
from .output import emit

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
    """Enroll, list, tag and revoke devices."""


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
    _print_token(ctx, out)


@devices.command()
@click.argument("device_id")
@pass_ctx
def token(ctx: Ctx, device_id: str) -> None:
    """Issue a new enrollment token (the previous one stops working)."""
    _print_token(ctx, ctx.client.post(f"/devices/{device_id}/token"))


def _print_token(ctx: Ctx, out: dict[str, object]) -> None:
    if ctx.as_json:
        emit(out, as_json=True)
        return
    click.echo(f"device {out['device_id']}: enrollment token (shown once, single use):")
    click.echo(f"  {out['token']}")
    click.echo("on the device, run:")
    click.echo(f"  {out['enroll_command']}")


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
    if not yes:
        click.confirm(f"revoke {device_id}? it will be cut off from the broker", abort=True)
    out = ctx.client.post(f"/devices/{device_id}/revoke")
    emit(out, as_json=ctx.as_json, columns=DEVICE_COLUMNS)


@click.group()
def twin() -> None:
    """Desired and reported state."""


@twin.command("show")
@click.argument("device_id")
@pass_ctx
def twin_show(ctx: Ctx, device_id: str) -> None:
    out = ctx.client.get(f"/devices/{device_id}/twin")
    if ctx.as_json:
        emit(out, as_json=True)
        return
    click.echo(f"{device_id}: {out['status']}")
    click.echo(f"  desired:  {out['desired']}")
    click.echo(f"  reported: {out['reported']}")


@twin.command("set")
@click.argument("device_id")
@click.option("--config", "pairs", multiple=True, help="key=value, repeatable")
@pass_ctx
def twin_set(ctx: Ctx, device_id: str, pairs: tuple[str, ...]) -> None:
    """Set desired configuration; the device is told over MQTT."""
    out = ctx.client.put(f"/devices/{device_id}/twin/desired", {"config": _tags(pairs)})
    emit(out, as_json=True) if ctx.as_json else click.echo(f"{device_id}: {out['status']}")


def register(cli: click.Group) -> None:
    cli.add_command(devices)
    cli.add_command(twin)
