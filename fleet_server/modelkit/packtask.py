"""The packer's task section: from ``--task``, the spec file and what the model did.

Where the user left a choice open, it is made from the model's own outputs on
the calibration samples, and said in the error when it cannot be: which output
holds the classes (the only float output with several values per sample),
whether those are probabilities or logits (rows in [0, 1] summing to 1), and
an anomaly threshold (a quantile of the calibration scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from edgefleet_contract import safezip
from edgefleet_contract.errors import PackageError
from edgefleet_contract.interpret import scalar_scores
from edgefleet_contract.package import TensorSpec
from edgefleet_contract.task import InputRole, RegressionOutput, Task

from . import packrun
from .packspec import TaskSpec

MAX_LABELS = 10_000


def read_labels(path: Path | None, inline: list[str] | None) -> list[str]:
    """Labels from ``--labels FILE`` (one per line) or the spec's ``labels``."""
    if path is None:
        return list(inline or [])
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PackageError(f"labels file {path}: {exc}") from exc
    labels = [line.strip() for line in lines if line.strip()]
    if not labels or len(labels) > MAX_LABELS:
        raise PackageError(f"labels file {path} needs 1 to {MAX_LABELS} labels, one per line")
    return labels


def default_labels(task: Task, outputs: Sequence[TensorSpec]) -> list[str]:
    """Class indices as labels, for a classifier packed without ``--labels``."""
    if task.kind != "classification":
        return []
    classes = next(o for o in outputs if o.name == task.output).features
    return [str(i) for i in range(classes)]


def build_task(
    kind: str,
    spec: TaskSpec,
    roles: list[InputRole],
    outputs: Sequence[TensorSpec],
    run: packrun.Run,
    labels: list[str],
) -> Task:
    fed_back = {r.state_from for r in roles if r.state_from}
    free = [o for o in outputs if o.name not in fed_back]
    doc: dict[str, Any] = {"kind": kind, "inputs": [r.model_dump() for r in roles]}
    if kind == "classification":
        doc |= _classification(spec, free, run, labels)
    elif kind == "regression":
        units = spec.outputs or [RegressionOutput(name=o.name) for o in free if _is_float(o)]
        doc["outputs"] = [u.model_dump() for u in units]
    elif kind == "anomaly":
        doc |= _anomaly(spec, free, run)
    elif kind == "detection":
        doc |= _detection(spec)
    elif kind != "tensors":
        raise PackageError(
            f"--task {kind!r} is not one of classification, regression, anomaly, detection, tensors"
        )
    try:
        return TypeAdapter(Task).validate_python(doc)
    except ValidationError as exc:
        raise PackageError(f"task: {safezip.first_error(exc)}") from exc


def _is_float(t: TensorSpec) -> bool:
    return t.dtype in ("float32", "float16") or t.quantization is not None


def _pick(spec_name: str | None, candidates: list[TensorSpec], what: str, option: str) -> str:
    if spec_name is not None:
        return spec_name
    if len(candidates) != 1:
        names = [c.name for c in candidates] or "none"
        raise PackageError(
            f"cannot tell which output holds the {what} (candidates: {names}); name it in the "
            f'spec file: [task] {option} = "..."'
        )
    return candidates[0].name


def _classification(
    spec: TaskSpec, free: list[TensorSpec], run: packrun.Run, labels: list[str]
) -> dict[str, Any]:
    candidates = [o for o in free if _is_float(o) and o.features >= 2]
    output = _pick(spec.output, candidates, "class scores", "output")
    spec_out = next(o for o in free if o.name == output)
    classes = spec_out.features
    if labels and len(labels) != classes:
        raise PackageError(
            f"{len(labels)} labels given, but output {output!r} has {classes} classes: "
            "give one label per class, in output order"
        )
    scores = spec.scores
    if scores is None:
        p = np.concatenate([o[output].reshape(len(o[output]), -1) for o in run.outputs])
        # An int8 output rounds each probability to its scale: the sum may be off by that much
        # per class.
        step = spec_out.quantization.scale if spec_out.quantization else 0.0
        in_range = bool(((p >= -step) & (p <= 1 + step)).all())
        sums_to_one = bool(np.allclose(p.sum(axis=1), 1.0, atol=1e-3 + classes * step))
        scores = "probabilities" if in_range and (sums_to_one or spec.multi_label) else "logits"
    doc: dict[str, Any] = {"output": output, "scores": scores, "multi_label": spec.multi_label}
    if spec.threshold is not None:
        doc["threshold"] = spec.threshold
    return doc


def _anomaly(spec: TaskSpec, free: list[TensorSpec], run: packrun.Run) -> dict[str, Any]:
    candidates = [o for o in free if _is_float(o) and o.features == 1]
    output = _pick(spec.output, candidates, "anomaly score", "output")
    scores = np.concatenate([scalar_scores(o[output]) for o in run.outputs])
    q = spec.threshold_quantile if spec.higher_is_anomalous else 1 - spec.threshold_quantile
    threshold = spec.threshold if spec.threshold is not None else float(np.quantile(scores, q))
    return {
        "output": output,
        "higher_is_anomalous": spec.higher_is_anomalous,
        "threshold": threshold,
        "reference_quantile": None if spec.threshold is not None else spec.threshold_quantile,
    }


def _detection(spec: TaskSpec) -> dict[str, Any]:
    if spec.boxes is None or spec.scores is None:
        raise PackageError(
            'a detection task names its outputs in the spec file: [task] boxes = "...", '
            'scores = "..." (and classes = "..." when the model outputs class ids)'
        )
    doc: dict[str, Any] = {
        "boxes": spec.boxes,
        "scores": spec.scores,
        "classes": spec.classes,
        "box_format": spec.box_format,
        "postprocess": spec.postprocess,
    }
    for key in ("score_threshold", "iou_threshold", "max_detections"):
        if getattr(spec, key) is not None:
            doc[key] = getattr(spec, key)
    return doc
