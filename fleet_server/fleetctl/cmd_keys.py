"""``fleetctl keys ...``: the TUF root key ceremony and key rotation.

``init`` and ``sign-root`` never touch the network: run them on the machine
that holds the root keys (ideally air-gapped) and carry files across.  The
other commands talk to the server: ``show`` prints the root and online keys,
``rotate`` asks the server for a root proposal (new online keys, or new root
keys), ``install-root`` publishes a root signed offline.

Passphrases come from a prompt or ``EDGEFLEET_KEY_PASSPHRASE``; never a flag.
The signing code (python-tuf) is imported when a command runs, so the rest of
fleetctl works on a machine without it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from edgefleet_contract.errors import SigningError

from .cli import Ctx, pass_ctx
from .output import emit, report

ROLES = ("root", "targets", "snapshot", "timestamp")
PASSPHRASE_ENV = "EDGEFLEET_KEY_PASSPHRASE"


def _tuf() -> tuple[ModuleType, ModuleType]:
    try:
        from ..tuf import keys, offline
    except ImportError as exc:
        raise SigningError(
            f"key commands need python-tuf ({exc.name} is missing): pip install 'edgefleet[server]'"
        ) from None
    return keys, offline


def _passphrase(prompt: str, *, confirm: bool = False) -> bytes:
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env.encode()
    value = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)
    return str(value).encode()


def _signers(paths: tuple[Path, ...]) -> list[Any]:
    tuf_keys, _ = _tuf()
    signers = []
    for path in paths:
        secret = _passphrase(f"Passphrase for {path.name}") if tuf_keys.is_encrypted(path) else None
        signers.append(tuf_keys.load(path, passphrase=secret))
    return signers


@click.group()
def keys() -> None:
    """TUF keys: offline root ceremony, signing a root, rotating keys."""


@keys.command("init")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--keys", "count", default=3, show_default=True, help="Root keys to make.")
@click.option("--threshold", default=2, show_default=True, help="Signatures a root needs.")
@pass_ctx
def keys_init(ctx: Ctx, out: Path, count: int, threshold: int) -> None:
    """Make offline root keys (encrypted) and root-keys.json (public). Offline; no server."""
    _, offline = _tuf()
    secret = _passphrase("Passphrase for the new root keys", confirm=True)
    made = offline.make_root_keys(out, count=count, threshold=threshold, passphrase=secret)
    result = {
        "directory": str(out),
        "threshold": threshold,
        "keyids": [k.keyid for k in made],
        "public": str(out / offline.PUBLIC_FILE),
    }
    report(
        result,
        f"made {count} root keys in {out} (any {threshold} can sign a root)",
        f"public keys: {out / offline.PUBLIC_FILE} (this file, and only it, leaves)",
        "next, where the server is reachable:",
        f"  fleetctl keys rotate --role root --root-keys {out / offline.PUBLIC_FILE}",
    )


@keys.command("show")
@pass_ctx
def keys_show(ctx: Ctx) -> None:
    """The server's current root (version, expiry, thresholds) and online keys."""
    root = ctx.client.get("/tuf/root")["signed"]
    rows = [
        {
            "role": role,
            "threshold": spec["threshold"],
            "keyids": [k[:16] for k in spec["keyids"]],
        }
        for role, spec in root["roles"].items()
    ]
    if ctx.as_json:
        emit({"version": root["version"], "expires": root["expires"], "roles": rows}, as_json=True)
        return
    emit(
        rows,
        as_json=False,
        columns=[("role", "ROLE"), ("threshold", "THRESHOLD"), ("keyids", "KEY IDS")],
        title=f"root version {root['version']}, expires {root['expires']}",
    )


@keys.command("rotate")
@click.option("--role", "roles", type=click.Choice(ROLES), multiple=True, required=True)
@click.option(
    "--root-keys",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="root-keys.json of the new root keys (with --role root).",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to write the proposal."
)
@click.option(
    "--sign-with",
    "sign_with",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="Root key files to sign and install right away (skips the offline round trip).",
)
@pass_ctx
def keys_rotate(
    ctx: Ctx,
    roles: tuple[str, ...],
    root_keys: Path | None,
    out: Path | None,
    sign_with: tuple[Path, ...],
) -> None:
    """Get a new root from the server with fresh keys for ROLE; sign it offline, then install.

    Online roles get new keys the server generates (they take over when the
    signed root is installed).  ``--role root`` needs ``--root-keys``; that root
    must be signed by a threshold of the old root keys and of the new ones.
    """
    tuf_keys, offline = _tuf()
    body: dict[str, object] = {"rotate": [r for r in roles if r != "root"]}
    if "root" in roles:
        if root_keys is None:
            raise click.UsageError("--role root needs --root-keys DIR/root-keys.json")
        found, threshold = offline.read_root_keys(root_keys)
        body["root_keys"] = [tuf_keys.public_doc(k) for k in found]
        body["root_threshold"] = threshold
    proposal = ctx.client.post("/tuf/root-proposals", body)
    version = proposal["signed"]["version"]
    data = json.dumps(proposal, indent=1).encode()
    if sign_with:
        signed = offline.sign_root(data, _signers(sign_with))
        result = ctx.client.request(
            "POST", "/tuf/root", content=signed, headers={"Content-Type": "application/json"}
        )
        click.echo(f"installed root version {result['version']} (expires {result['expires']})")
        return
    path = out or Path(f"root-v{version}.proposal.json")
    path.write_bytes(data)
    click.echo(f"wrote the unsigned root version {version} to {path}")
    click.echo("carry it to the root keys and sign it there:")
    click.echo(
        f"  fleetctl keys sign-root {path} --key KEY [--key KEY ...] --out root-v{version}.json"
    )
    click.echo(f"then: fleetctl keys install-root root-v{version}.json")


@keys.command("sign-root")
@click.argument("proposal", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--key",
    "key_files",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    required=True,
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@pass_ctx
def keys_sign_root(ctx: Ctx, proposal: Path, key_files: tuple[Path, ...], out: Path) -> None:
    """Add signatures to a root proposal with root key files. Offline; no server."""
    tuf_keys, offline = _tuf()
    signed = offline.sign_root(tuf_keys.read_json_bytes(proposal), _signers(key_files))
    out.write_bytes(signed)
    doc = json.loads(signed)
    count = len(doc["signatures"])
    click.echo(f"{out}: root version {doc['signed']['version']} now has {count} signature(s)")


@keys.command("install-root")
@click.argument("signed", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_ctx
def keys_install_root(ctx: Ctx, signed: Path) -> None:
    """Publish a root signed offline; the server checks it as a device would."""
    data = signed.read_bytes()
    if not data.strip():
        raise SigningError(f"{signed} is empty")
    result = ctx.client.request(
        "POST", "/tuf/root", content=data, headers={"Content-Type": "application/json"}
    )
    report(result, f"installed root version {result['version']} (expires {result['expires']})")


def register(cli: click.Group) -> None:
    cli.add_command(keys)
