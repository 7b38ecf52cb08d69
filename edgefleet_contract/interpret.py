"""Model outputs -> what a task's answer is, one JSON-ready object per sample.

Numpy-only and shared: the agent answers the local API with it, the packer
prints a sample answer with it, and the tests read the same shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from . import task as tasks

Outputs = Mapping[str, npt.NDArray[Any]]


def softmax(x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    z: npt.NDArray[np.float32] = np.asarray(x, dtype=np.float32)
    z = z - z.max(axis=-1, keepdims=True)  # a new array: the steps below work in place
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def sigmoid(x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float32))), dtype=np.float32)


def class_scores(task: tasks.Classification, outputs: Outputs) -> npt.NDArray[np.float32]:
    """Per-sample class probabilities ``(n, classes)`` from the class output."""
    raw = np.asarray(outputs[task.output], dtype=np.float32)
    raw = raw.reshape(raw.shape[0] if raw.ndim > 1 else 1, -1)
    if task.scores == "probabilities":
        return raw
    return sigmoid(raw) if task.multi_label else softmax(raw)


def scalar_scores(output: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """One score per sample from an output of ``(n,)``, ``(n, 1)`` or a scalar."""
    return np.asarray(_per_sample(output), dtype=np.float64)


def _per_sample(output: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The first value of each sample's output, in the output's dtype."""
    x = np.asarray(output)
    return x.reshape(-1) if x.ndim <= 1 else x.reshape(x.shape[0], -1)[:, 0]


def results(task: tasks.Task, outputs: Outputs, labels: Sequence[str]) -> list[dict[str, Any]]:
    """One answer per sample, shaped by the task's kind."""
    if isinstance(task, tasks.Classification):
        return _classification(task, outputs, labels)
    if isinstance(task, tasks.Regression):
        return _regression(task, outputs)
    if isinstance(task, tasks.Anomaly):
        # tolist() and item() give the float32 scores as the Python floats a float64 copy
        # would, in fewer numpy calls: each costs 10-40 µs on the caches a model call just
        # went through, and one sample's score is one item.
        out = np.asarray(outputs[task.output])
        scores = [out.item()] if out.size == 1 else _per_sample(out).tolist()
        sign = 1.0 if task.higher_is_anomalous else -1.0
        return [
            {
                "score": float(s),
                "anomaly": bool(sign * (s - task.threshold) > 0),
                "threshold": task.threshold,
            }
            for s in scores
        ]
    if isinstance(task, tasks.Detection):
        return _detection(task, outputs, labels)
    return [{"outputs": {name: np.asarray(v).tolist() for name, v in outputs.items()}}]


def _classification(
    task: tasks.Classification, outputs: Outputs, labels: Sequence[str]
) -> list[dict[str, Any]]:
    return classification_results(task, class_scores(task, outputs), labels)


def classification_results(
    task: tasks.Classification,
    p: npt.NDArray[np.float32],
    labels: Sequence[str],
    *,
    top: npt.NDArray[np.intp] | None = None,
) -> list[dict[str, Any]]:
    """The answers of a classifier from its class probabilities ``(n, classes)``;
    ``top``: their argmax, when the caller has it already."""
    if task.multi_label:
        return [
            {
                "labels": [labels[i] for i in np.flatnonzero(row >= task.threshold).tolist()],
                "probabilities": row.tolist(),
            }
            for row in p
        ]
    best = (p.argmax(axis=1) if top is None else top).tolist()
    return [class_answer(labels, c, row) for c, row in zip(best, p.tolist(), strict=True)]


def class_answer(labels: Sequence[str], c: int, p: list[float]) -> dict[str, Any]:
    """One single-label answer: class ``c`` of the class probabilities ``p``."""
    return {"label": labels[c], "class_id": c, "confidence": p[c], "probabilities": p}


def _regression(task: tasks.Regression, outputs: Outputs) -> list[dict[str, Any]]:
    columns = {}
    for out in task.outputs:
        x = np.asarray(outputs[out.name], dtype=np.float64)
        columns[out.name] = x.reshape(x.shape[0] if x.ndim > 1 else 1, -1)
    n = next(iter(columns.values())).shape[0]
    units = {o.name: o.units for o in task.outputs}
    rows = []
    for i in range(n):
        values = {name: col[i].tolist() for name, col in columns.items()}
        row: dict[str, Any] = {"values": values}
        if any(units.values()):
            row["units"] = {name: u for name, u in units.items() if u}
        rows.append(row)
    return rows


def _detection(
    task: tasks.Detection, outputs: Outputs, labels: Sequence[str]
) -> list[dict[str, Any]]:
    boxes = np.asarray(outputs[task.boxes], dtype=np.float32)
    scores = np.asarray(outputs[task.scores], dtype=np.float32)
    if boxes.ndim == 2:
        boxes, scores = boxes[None], scores[None]
    answers = []
    for b, s, image in zip(boxes, scores, range(len(boxes)), strict=True):
        if task.classes is not None:
            cls = np.asarray(outputs[task.classes]).reshape(len(boxes), -1)[image].astype(np.int64)
            score = s.reshape(-1)
        else:
            per_class = s.reshape(b.shape[0], -1)
            cls, score = per_class.argmax(axis=1), per_class.max(axis=1)
        xyxy = to_xyxy(b.reshape(-1, 4), task.box_format)
        keep = np.flatnonzero(score >= task.score_threshold)
        if task.postprocess == "nms":
            keep = keep[nms(xyxy[keep], score[keep], task.iou_threshold)]
        keep = keep[np.argsort(-score[keep], kind="stable")][: task.max_detections]
        answers.append(
            {
                "detections": [
                    {
                        "box": xyxy[k].tolist(),
                        "score": float(score[k]),
                        "class_id": int(cls[k]),
                        **(
                            {"label": labels[int(cls[k])]} if 0 <= int(cls[k]) < len(labels) else {}
                        ),
                    }
                    for k in keep.tolist()
                ]
            }
        )
    return answers


def to_xyxy(b: npt.NDArray[np.float32], fmt: str) -> npt.NDArray[np.float32]:
    if fmt == "xywh":
        return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
    if fmt == "cxcywh":
        half = b[:, 2:] / 2
        return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1)
    return b


def nms(boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], iou: float) -> Any:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    kept: list[int] = []
    while order.size:
        i = int(order[0])
        kept.append(i)
        rest = order[1:]
        lo = np.maximum(boxes[i, :2], boxes[rest, :2])
        hi = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.maximum(hi - lo, 0), axis=1)
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        order = rest[overlap <= iou]
    return np.asarray(kept, dtype=np.intp)
