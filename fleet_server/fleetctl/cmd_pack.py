"""``fleetctl models pack`` (offline) and ``fleetctl models show``.

``pack`` needs no server: it turns the ONNX or TFLite file a training tool
wrote into a verified package (see :mod:`fleet_server.modelkit.pack`), with
a live status line while it loads, runs and verifies.  ``show`` summarises a
registered package (``NAME@VERSION[:FLAVOR]``) or a local ``.efpkg`` file.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from edgefleet_contract.errors import EdgefleetError
from edgefleet_contract.package import SUFFIX, read_package
from edgefleet_contract.summary import summarize

from .cli import Ctx, pass_ctx
from .output import emit

RAW_MODEL_SUFFIXES = (".onnx", ".tflite")


def pack_hint(path: Path) -> str:
    """The pack command to run for a raw model file someone tried to push."""
    name = path.stem.lower().replace("_", "-")
    return (
        f"{path.name} is a model file, not a package: pack it first, then push the package:\n"
        f"  fleetctl models pack {shlex.quote(str(path))} --name {name} --version 1.0.0 "
        f"--calibration SAMPLES --output {name}-1.0.0{SUFFIX}\n"
        f"  fleetctl models push {name}-1.0.0{SUFFIX}"
    )


@click.command("pack")
@click.argument("model_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Package name (letters, digits, . _ -).")
@click.option("--version", "version", help="Semantic version, e.g. 1.0.0.")
@click.option(
    "--task",
    type=click.Choice(["classification", "regression", "anomaly", "detection", "tensors"]),
    help="What the outputs mean (default: classification with --labels, else tensors).",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Class labels, one per line, in output order.",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, path_type=Path),
    help="Samples: .npy, .npz (one array per input), .csv or a folder of images.",
)
@click.option(
    "--quantize",
    type=click.Choice(["none", "int8"]),
    default=None,
    help="int8: static QDQ on the calibration samples (ONNX).",
)
@click.option(
    "--spec",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML spec: input roles, pinned shapes, preprocessing, task details.",
)
@click.option(
    "--embedding",
    help="Tensor to split the graph at: the dense layers after it become a head that "
    "federated rounds fine-tune (the graph before it stays frozen).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Package file to write (default: NAME-VERSION-FLAVOR.efpkg beside the model).",
)
@pass_ctx
def models_pack(
    ctx: Ctx,
    model_file: Path,
    name: str | None,
    version: str | None,
    task: str | None,
    labels: Path | None,
    calibration: Path | None,
    quantize: str | None,
    spec: Path | None,
    embedding: str | None,
    output: Path | None,
) -> None:
    """Pack an ONNX or TFLite model file into a package (offline; no server needed)."""
    from fleet_server.modelkit.pack import PackRequest, pack

    request = PackRequest(
        model=model_file,
        name=name,
        version=version,
        task=task,
        labels=labels,
        calibration=calibration,
        quantize=quantize,
        spec=spec,
        embedding=embedding,
    )
    console = Console(stderr=True)
    with console.status("packing", spinner="dots") as status:

        def progress(step: str) -> None:
            status.update(step)
            if not ctx.as_json:
                console.print(f"[dim]{step}[/dim]")

        request.output = output
        package, target = pack(request, progress)
    doc = summarize(package.manifest, size=package.size) | {"file": str(target)}
    if ctx.as_json:
        emit(doc, as_json=True)
        return
    click.echo(f"wrote {target} ({package.size} bytes, sha256 {package.sha256[:16]}...)")
    _echo_summary(doc)
    click.echo(f"push it with: fleetctl models push {shlex.quote(str(target))}")


@click.command("show")
@click.argument("model")
@pass_ctx
def models_show(ctx: Ctx, model: str) -> None:
    """Summarise a model: NAME@VERSION[:FLAVOR] in the registry, or a local .efpkg file."""
    path = Path(model)
    if path.suffix == SUFFIX and path.exists():
        package = read_package(path)
        doc = summarize(package.manifest, size=package.size)
    else:
        doc = _registered(ctx, model)
    if ctx.as_json:
        emit(doc, as_json=True)
        return
    _echo_summary(doc)


def _registered(ctx: Ctx, spec: str) -> dict[str, Any]:
    ref, _, flavor = spec.partition(":")
    name, at, version = ref.partition("@")
    if not at or not name or not version:
        raise EdgefleetError(
            f"name a model as NAME@VERSION[:FLAVOR] or a .efpkg file, not {spec!r}"
        )
    page = ctx.client.get("/artifacts", kind="model", name=name, limit=1000)
    found = [a for a in page["items"] if a["version"] == version]
    if flavor:
        found = [a for a in found if a["flavor"] == flavor]
    if not found:
        raise EdgefleetError(
            f"no model {spec} in the registry (fleetctl models list --name {name})"
        )
    if len(found) > 1:
        flavors = ", ".join(sorted(a["flavor"] for a in found))
        raise EdgefleetError(f"{spec} has several flavours ({flavors}): add :FLAVOR")
    summary: dict[str, Any] = ctx.client.get(f"/artifacts/{found[0]['id']}/model")
    return summary


def _echo_summary(doc: dict[str, Any]) -> None:
    task = doc["task"]
    noise = {"kind", "version"} | (
        {"threshold", "multi_label"} if not task.get("multi_label") else set()
    )
    details = ", ".join(
        f"{k}={v}" for k, v in task.items() if k not in noise and v not in (None, [], False)
    )
    click.echo(f"{doc['name']} {doc['version']}  {doc['flavor']}  format {doc['format']}")
    click.echo(
        f"task: {task['kind']} (task version {task['version']}){': ' + details if details else ''}"
    )
    for title, tensors in (("inputs", doc["inputs"]), ("outputs", doc["outputs"])):
        click.echo(f"{title}:")
        for t in tensors:
            extra = f"  [{t['role']}]" if t.get("role", "data") != "data" else ""
            if t.get("state_from"):
                extra += f" <- {t['state_from']}"
            if t.get("quantization"):
                q = t["quantization"]
                extra += f"  scale={q['scale']:.6g} zero_point={q['zero_point']}"
            click.echo(f"  {t['name']}  {t['dtype']}{t['shape']}{extra}")
            if t.get("preprocessing"):
                click.echo(f"    preprocessing: {t['preprocessing']}")
    head = doc.get("head")
    if head:
        click.echo(f"trainable head after {head['embedding']}: dense {', '.join(head['layers'])}")
    q = doc["quantization"]
    click.echo(f"quantization: {q['dtype']} ({q['method']})")
    if q.get("int8_ops"):
        ops = ", ".join(f"{op} x{n}" for op, n in q["int8_ops"].items())
        click.echo(f"  int8 weights in: {ops}")
    agreement = q.get("agreement")
    if agreement:
        for out in agreement["outputs"]:
            top1 = f"top-1 {out['top1']:.1%}, " if out.get("top1") is not None else ""
            click.echo(
                f"  float vs int8 on {agreement['samples']} calibration samples, {out['name']}: "
                f"{top1}max error {out['max_abs_error']:.3g}"
            )
    if doc["labels"]:
        shown = ", ".join(doc["labels"][:10]) + (" ..." if len(doc["labels"]) > 10 else "")
        click.echo(f"labels ({len(doc['labels'])}): {shown}")
    click.echo(
        f"self-test vectors: {doc['self_test_vectors']}, drift features: {doc['drift_features']}"
    )
    click.echo(f"size: {doc['size']} bytes (model file {doc['model_bytes']} bytes)")
