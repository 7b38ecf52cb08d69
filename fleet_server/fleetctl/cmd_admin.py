"""``fleetctl users ...``, ``fleetctl tokens ...`` and ``fleetctl audit``."""

from __future__ import annotations

import sys
import time

import click

from .cli import Ctx, pass_ctx
from .cmd_telemetry import ago_seconds
from .output import emit, emit_items, report, when

USER_COLUMNS = [
    ("username", "USER"),
    ("role", "ROLE"),
    ("disabled", "DISABLED"),
    ("created_at", "CREATED"),
]
TOKEN_COLUMNS = [
    ("id", "ID"),
    ("username", "USER"),
    ("name", "NAME"),
    ("expires_at", "EXPIRES"),
    ("revoked_at", "REVOKED"),
    ("last_used", "LAST USED"),
]


def _list_command(path: str, title: str, columns: list[tuple[str, str]], doc: str) -> click.Command:
    """``users list`` and ``tokens list``: the API's list at ``path`` as a table."""

    @pass_ctx
    def command(ctx: Ctx) -> None:
        emit_items(ctx.client.get(path), title=title, columns=columns)

    command.__doc__ = doc
    return click.command("list")(command)


@click.group()
def users() -> None:
    """Manage users (admin)."""


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
    report(
        out,
        f"token {out['token_id']} ({out['role']}), expires {when(out['expires_at'])}:",
        f"  {out['token']}",
        "it is shown only now; use it as FLEETCTL_TOKEN or an Authorization: Bearer header",
    )


@tokens.command("revoke")
@click.argument("token_id")
@pass_ctx
def tokens_revoke(ctx: Ctx, token_id: str) -> None:
    """Revoke an API token; requests with it fail from now on."""
    ctx.client.delete(f"/tokens/{token_id}")
    click.echo(f"token {token_id} revoked")


@click.command()
@click.option("--actor", default=None, help="Only what this user did.")
@click.option("--action", default=None, help="Only this action, e.g. create_rollout.")
@click.option("--object", "object_", default=None, help="Only entries about it: rollout:ro-7.")
@click.option("--outcome", type=click.Choice(["ok", "denied", "failed", "error"]), default=None)
@click.option("--since", default=None, help="How far back: 30m, 6h, 2d.")
@click.option("--until", default=None, help="Up to this long ago: 1h.")
@click.option("--limit", default=50, show_default=True)
@pass_ctx
def audit(
    ctx: Ctx,
    actor: str | None,
    action: str | None,
    object_: str | None,
    outcome: str | None,
    since: str | None,
    until: str | None,
    limit: int,
) -> None:
    """Show the audit log (admin): who did what to which object, the outcome and why."""
    now = time.time()
    page = ctx.client.get(
        "/audit",
        actor=actor,
        action=action,
        object=object_,
        outcome=outcome,
        since=now - ago_seconds(since) if since else None,
        until=now - ago_seconds(until) if until else None,
        limit=limit,
    )
    emit_items(
        page,
        title="audit entries",
        row=lambda e: {**e, "reason": (e.get("detail") or {}).get("reason")},
        columns=[
            ("ts", "WHEN"),
            ("actor", "WHO"),
            ("action", "ACTION"),
            ("target", "OBJECT"),
            ("outcome", "OUTCOME"),
            ("reason", "REASON"),
            ("source_ip", "FROM"),
        ],
    )


def register(cli: click.Group) -> None:
    users.add_command(
        _list_command("/users", "users", USER_COLUMNS, "List users with their roles (admin).")
    )
    tokens.add_command(
        _list_command(
            "/tokens",
            "tokens",
            TOKEN_COLUMNS,
            "List API tokens: yours, or everyone's for an admin.",
        )
    )
    cli.add_command(users)
    cli.add_command(tokens)
    cli.add_command(audit)
