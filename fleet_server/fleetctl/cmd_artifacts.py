"""``fleetctl models push|list`` and ``fleetctl firmware push|list``.

A push streams the file as the request body with a progress bar; the server
verifies it with the same reader a device uses, so a bad package is refused
with the reader's own message.  The file is checked locally first as well,
which turns most mistakes into an error before a long upload.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from edgefleet_contract.firmware import read_bundle
from edgefleet_contract.package import read_package

from .cli import Ctx, pass_ctx
from .output import emit, report

CHUNK = 256 * 1024
COLUMNS = [
    ("id", "ID"),
    ("spec", "ARTIFACT"),
    ("size", "BYTES"),
    ("sha256", "SHA256"),
    ("source", "LINEAGE"),
    ("uploaded_by", "BY"),
]


def _chunks(path: Path, advance: Callable[[int], None]) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            advance(len(chunk))
            yield chunk


def upload(ctx: Ctx, route: str, path: Path) -> Any:
    size = path.stat().st_size
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=ctx.as_json,
    )
    with progress:
        task = progress.add_task(f"pushing {path.name}", total=size)
        return ctx.client.request(
            "POST",
            route,
            content=_chunks(path, lambda n: progress.advance(task, n)),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )


def _lineage(item: dict[str, Any]) -> dict[str, Any]:
    lineage = item.get("lineage") or {}
    source = str(lineage.get("source", "-"))
    if lineage.get("run_id"):
        source += f" {lineage['run_id']}"
    if lineage.get("parent"):
        source += f" <- {lineage['parent']}"
    return {**item, "sha256": item["sha256"][:12], "source": source}


def _list_command(kind: str, doc: str) -> click.Command:
    """``models list`` and ``firmware list``: one command, the kind it lists bound in."""

    @click.option("--name", default=None)
    @click.option("--limit", default=100, show_default=True)
    @pass_ctx
    def command(ctx: Ctx, name: str | None, limit: int) -> None:
        page = ctx.client.get("/artifacts", kind=kind, name=name, limit=limit)
        if ctx.as_json:
            emit(page, as_json=True)
            return
        rows = [_lineage(item) for item in page["items"]]
        columns = [*COLUMNS, ("hardware", "HARDWARE")] if kind == "firmware" else COLUMNS
        emit(rows, as_json=False, columns=columns, title=f"{page['total']} {kind} artifacts")

    command.__doc__ = doc
    return click.command("list")(command)


def _pushed(artifact: dict[str, Any]) -> None:
    report(
        artifact,
        f"registered {artifact['spec']} ({artifact['size']} bytes, sha256 "
        f"{artifact['sha256'][:16]}...) as TUF target {artifact['target_path']}",
    )


@click.group()
def models() -> None:
    """Push and list model packages in the registry."""


@models.command("push")
@click.argument("package", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_ctx
def models_push(ctx: Ctx, package: Path) -> None:
    """Upload a model package (.efpkg): verified, stored and signed as a TUF target.

    A raw .onnx/.tflite file is refused with the ``fleetctl models pack`` command to run.
    """
    from edgefleet_contract.errors import PackageError

    from .cmd_pack import RAW_MODEL_SUFFIXES, pack_hint

    if package.suffix.lower() in RAW_MODEL_SUFFIXES:
        raise PackageError(pack_hint(package))
    try:
        read_package(package)
    except PackageError as exc:
        with package.open("rb") as fh:
            magic = fh.read(4)
        if magic != b"PK\x03\x04":
            raise PackageError(f"{exc}\n{pack_hint(package)}") from exc
        raise
    _pushed(upload(ctx, "/artifacts/models", package))


@models.command("card")
@click.argument("spec")
@pass_ctx
def models_card(ctx: Ctx, spec: str) -> None:
    """A version's model card (name@version): Markdown, or the JSON card with --json."""
    name, sep, version = spec.partition("@")
    if not sep or not name or not version or ":" in version:
        raise click.BadParameter(
            f"{spec!r}: write name@version, e.g. digits@1.0.0", param_hint="SPEC"
        )
    path = f"/models/{quote(name, safe='')}/{quote(version, safe='')}/card"
    if ctx.as_json:
        emit(ctx.client.get(path), as_json=True)
    else:
        click.echo(ctx.client.get_text(path, format="md"), nl=False)


@click.group()
def firmware() -> None:
    """Push and list firmware bundles in the registry."""


@firmware.command("push")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_ctx
def firmware_push(ctx: Ctx, bundle: Path) -> None:
    """Upload a firmware bundle (.efbundle): verified, stored and signed as a TUF target."""
    read_bundle(bundle)
    _pushed(upload(ctx, "/artifacts/firmware", bundle))


def register(cli: click.Group) -> None:
    from .cmd_pack import models_pack, models_show

    models.add_command(models_pack)
    models.add_command(models_show)
    models.add_command(_list_command("model", "Registered model versions with their lineage."))
    firmware.add_command(
        _list_command("firmware", "Registered firmware versions with their compatible hardware.")
    )
    cli.add_command(models)
    cli.add_command(firmware)
