"""The consistency rules of a format-2 manifest (its task against its tensors).

Kept apart from the schema in :mod:`.package` so each rule reads on its own;
every message names the tensor or field at fault, because a packer error is
what a user bringing a model reads first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from . import task as tasks

if TYPE_CHECKING:
    from .package import Manifest


def check_task(m: Manifest) -> None:
    task = m.task
    assert task is not None
    inputs = {t.name: t for t in m.inputs}
    outputs = {t.name: t for t in m.outputs}
    declared = [i.name for i in task.inputs]
    if sorted(declared) != sorted(inputs):
        raise ValueError(
            f"task.inputs names {declared}; the model's inputs are {list(inputs)}: "
            "declare every input once"
        )
    for name in task.outputs_named():
        if name not in outputs:
            raise ValueError(f"the task names output {name!r}; the model has {list(outputs)}")
    for role in task.inputs:
        spec = inputs[role.name]
        if role.role == "state":
            source = outputs[role.state_from or ""]
            if source.shape != spec.shape or source.dtype != spec.dtype:
                raise ValueError(
                    f"state input {role.name!r} is {spec.dtype}{spec.shape} but output "
                    f"{role.state_from!r} that feeds it is {source.dtype}{source.shape}"
                )
            if spec.batched:
                raise ValueError(f"state input {role.name!r} needs a fixed shape (no -1)")
        if role.role == "constant" and len(role.value or []) != math.prod(spec.shape):
            raise ValueError(
                f"constant input {role.name!r} needs {math.prod(spec.shape)} values, "
                f"got {len(role.value or [])}"
            )
        if role.preprocessing.image is not None and spec.dtype == "bool":
            raise ValueError(f"input {role.name!r} is bool and cannot take an image")
    _check_kind(m, task)
    _check_vectors(m, task)


def _check_kind(m: Manifest, task: tasks.Task) -> None:
    if isinstance(task, tasks.Classification):
        classes = m.output_spec(task.output).features
        if len(m.labels) != classes:
            raise ValueError(
                f"{len(m.labels)} labels for output {task.output!r} of {classes} classes"
            )
        if classes < 2 and not task.multi_label:
            raise ValueError(f"output {task.output!r} has one value; a classifier needs two")
    elif m.labels and not isinstance(task, tasks.Detection):  # detection: labels of class ids
        raise ValueError(f"a {task.kind} task has no labels")
    if isinstance(task, tasks.Regression):
        for out in task.outputs:
            n = m.output_spec(out.name).features
            if out.units and len(out.units) not in (1, n):
                raise ValueError(f"output {out.name!r} has {n} values but {len(out.units)} units")


def _check_vectors(m: Manifest, task: tasks.Task) -> None:
    from .package import drift_width  # the drift view is defined with the package

    fed = [i for i in task.inputs if i.role != "constant"]
    width_in = sum(_raw_size(m, i) for i in fed)
    width_out = sum(t.features if t.batched else math.prod(t.shape) for t in m.outputs)
    if any(len(row) != width_in for row in m.self_test.inputs):
        raise ValueError(f"every self_test input row needs {width_in} values")
    if any(len(row) != width_out for row in m.self_test.expected):
        raise ValueError(f"every self_test expected row needs {width_out} values")
    width = drift_width(m)
    if width and len(m.drift.features) != width:
        raise ValueError(f"the drift reference must describe {width} features")


def _raw_size(m: Manifest, role: tasks.InputRole) -> int:
    from .preprocess import raw_shape

    return math.prod(raw_shape(role.preprocessing, m.input_spec(role.name).shape))


def check_head(m: Manifest) -> None:
    """A format-2 trainable part is a dense head over a declared embedding of a
    single-input classifier (the trainer's loss is cross-entropy over its classes)."""
    trainable = m.trainable
    assert trainable is not None
    if trainable.embedding is None:
        raise ValueError("a format 2 trainable part is a head over an embedding: name it")
    if m.runtime != "onnx":
        raise ValueError("a trainable head over an embedding needs an ONNX model")
    task = m.task
    if task is None or task.kind != "classification" or len(task.data_inputs) != 1:
        raise ValueError("a trainable head needs a classification task with one data input")
    last = trainable.layers[-1]
    classes = next(p.shape[0] for p in trainable.params if p.name == last.bias)
    if classes != len(m.labels):
        raise ValueError(f"the head has {classes} classes but the package {len(m.labels)} labels")
