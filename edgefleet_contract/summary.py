"""A package's manifest summarised for people: task, inputs and outputs, quantization, size.

One shape for ``fleetctl models show``, the server's ``GET /artifacts/{id}/model``,
the console's model page and the agent's ``GET /v1/model``, so all four say the
same thing about the same package.
"""

from __future__ import annotations

from typing import Any

from .package import Manifest, as_task


def summarize(manifest: Manifest, *, size: int | None = None) -> dict[str, Any]:
    m = manifest
    task = as_task(m)
    roles = {r.name: r for r in task.inputs}
    inputs = []
    for t in m.inputs:
        role = roles.get(t.name)
        entry: dict[str, Any] = {
            "name": t.name,
            "shape": list(t.shape),
            "dtype": t.dtype,
            "role": role.role if role else "data",
        }
        if t.quantization is not None:
            entry["quantization"] = t.quantization.model_dump()
        if role is not None and role.state_from:
            entry["state_from"] = role.state_from
        if role is not None and not role.preprocessing.is_identity:
            entry["preprocessing"] = role.preprocessing.model_dump(exclude_defaults=True)
        inputs.append(entry)
    outputs = [
        {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}
        | ({"quantization": t.quantization.model_dump()} if t.quantization else {})
        for t in m.outputs
    ]
    details = task.model_dump(exclude={"inputs", "version", "kind"}, exclude_none=True)
    return {
        "name": m.name,
        "version": m.version,
        "format": m.format,
        "runtime": m.runtime,
        "flavor": m.flavor,
        "task": {"kind": task.kind, "version": task.version, "stateful": task.stateful} | details,
        "inputs": inputs,
        "outputs": outputs,
        "labels": list(m.labels),
        "quantization": m.quantization.model_dump(exclude_none=True),
        "self_test_vectors": len(m.self_test.inputs),
        "drift_features": len(m.drift.features),
        "trainable": m.trainable is not None,
        "head": _head(m),
        "size": size,
        "model_file": m.model_file,
        "model_bytes": next((f.size for f in m.files if f.path == m.model_file), None),
        "lineage": m.lineage.model_dump(exclude_none=True),
    }


def _head(m: Manifest) -> dict[str, Any] | None:
    """A trainable head over an embedding: where it reads and its dense layers' shapes."""
    t = m.trainable
    if t is None or t.embedding is None:
        return None
    shapes = {p.name: p.shape for p in t.params}
    layers = [
        f"{shapes[layer.weight][0]}->{shapes[layer.weight][1]} {layer.activation}"
        for layer in t.layers
        if layer.weight is not None
    ]
    return {"embedding": t.embedding, "layers": layers}
