"""``fleetctl users ...``, ``fleetctl tokens ...`` and ``fleetctl audit``."""

from __future__ import annotations

import sys

import click

from .cli import Ctx, pass_ctx
from .output import emit, emit_items, when


@click.group()
def users() -> None:
    """Manage users (admin)."""


@users.command("list")
@pass_ctx
def users_list(ctx: Ctx) -> None:
    """List users with their roles (admin)."""
    emit_items(
        ctx.client.get("/users"),
        title="users",
        columns=[
            ("username", "USER"),
            ("role", "ROLE"),
            ("disabled", "DISABLED"),
            ("created_at", "CREATED"),
        ],
    )


@users.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True)
@click.option("--password-stdin", is_flag=True)
@pass_ctx
def users_add(ctx: Ctx, username: str, role: str, password_stdin: bool) -> None:
    """Add a user with a role (admin); the password is asked for or read from stdin."""
    password = (
        sys.stdin.readline().rstrip("\n")
        if password_stdin
        else click.prompt("Password", hide_input=True, confirmation_prompt=True)
    )
    out = ctx.client.post("/users", {"username": username, "role": role, "password": password})
    emit(out, as_json=ctx.as_json)


@users.command("set")
@click.argument("username")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]))
@click.option("--disable/--enable", default=None)
@pass_ctx
def users_set(ctx: Ctx, username: str, role: str | None, disable: bool | None) -> None:
    """Change a user's role, or disable or enable it (admin)."""
    out = ctx.client.patch(f"/users/{username}", {"role": role, "disabled": disable})
    emit(out, as_json=ctx.as_json)


@click.group()
def tokens() -> None:
    """Create, list and revoke API tokens."""


@tokens.command("create")
@click.argument("name")
@click.option("--ttl-days", type=click.IntRange(1, 400), default=None, help="Lifetime in days.")
@pass_ctx
def tokens_create(ctx: Ctx, name: str, ttl_days: int | None) -> None:
    """Create a token for yourself (e.g. for a CI job); it is shown only now."""
    body = {"name": name, "ttl_s": ttl_days * 86400 if ttl_days else None}
    out = ctx.client.post("/tokens", body)
    if ctx.as_json:
        emit(out, as_json=True)
        return
    click.echo(f"token {out['token_id']} ({out['role']}), expires {when(out['expires_at'])}:")
    click.echo(f"  {out['token']}")
    click.echo("it is shown only now; use it as FLEETCTL_TOKEN or an Authorization: Bearer header")


@tokens.command("list")
@pass_ctx
def tokens_list(ctx: Ctx) -> None:
    """List API tokens: yours, or everyone's for an admin."""
    emit_items(
        ctx.client.get("/tokens"),
        title="tokens",
        columns=[
            ("id", "ID"),
            ("username", "USER"),
            ("name", "NAME"),
            ("expires_at", "EXPIRES"),
            ("revoked_at", "REVOKED"),
            ("last_used", "LAST USED"),
        ],
    )


@tokens.command("revoke")
@click.argument("token_id")
@pass_ctx
def tokens_revoke(ctx: Ctx, token_id: str) -> None:
    """Revoke an API token; requests with it fail from now on."""
    ctx.client.delete(f"/tokens/{token_id}")
    click.echo(f"token {token_id} revoked")


@click.command()
@click.option("--actor", default=None)
@click.option("--limit", default=50, show_default=True)
@pass_ctx
def audit(ctx: Ctx, actor: str | None, limit: int) -> None:
    """Show the audit log (admin)."""
    page = ctx.client.get("/audit", actor=actor, limit=limit)
    if ctx.as_json:
        emit(page, as_json=True)
        return
    emit(
        page["items"],
        as_json=False,
        columns=[
            ("ts", "WHEN"),
            ("actor", "WHO"),
            ("role", "ROLE"),
            ("action", "ACTION"),
            ("target", "TARGET"),
            ("source_ip", "FROM"),
            ("outcome", "OUTCOME"),
        ],
    )


def register(cli: click.Group) -> None:
    cli.add_command(users)
    cli.add_command(tokens)
    cli.add_command(audit)
