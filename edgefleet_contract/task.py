"""The ``task`` section of a format-2 manifest: what the model's tensors mean.

Format-1 packages (the reference models) are single-input softmax classifiers
and carry no task; format 2 says, per input, whether the caller feeds it
(``data``, with its declared preprocessing), the model feeds it from its own
previous output (``state``: streaming models), or it is a constant; and, per
kind, how the outputs read: class scores, regression values with units, an
anomaly score with a threshold, or detection boxes.

The section is versioned on its own (``task.version``) so that a new kind or
field can be added without a new package format: an agent that meets a task
version or kind it does not know refuses the package with "upgrade the agent"
instead of guessing.  :mod:`.interpret` turns outputs into results; it is
numpy-only like this module, so the agent, the packer and the console agree.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from .preprocess import Preprocessing

TASK_VERSION = 1
"""The newest task version this code reads."""
KINDS = ("classification", "regression", "anomaly", "detection", "tensors")

TensorName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Unit = Annotated[str, StringConstraints(max_length=32)]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class InputRole(_Closed):
    """One runtime input and who feeds it."""

    name: TensorName
    role: Literal["data", "state", "constant"] = "data"
    preprocessing: Preprocessing = Preprocessing()
    state_from: TensorName | None = None
    """For ``state``: the output whose value is fed back on the session's next call."""
    initial: float = 0.0
    """For ``state``: the value every element starts at for a new session."""
    value: Annotated[list[float], Field(min_length=1, max_length=65536)] | None = None
    """For ``constant``: the tensor's values, flattened (e.g. a sample rate)."""
    drift: Literal["values", "channels", "none"] = "values"
    """What the drift reference describes: every raw value, or per image channel the
    mean and standard deviation (the default for images), or nothing."""

    @model_validator(mode="after")
    def _consistent(self) -> InputRole:
        if (self.role == "state") != (self.state_from is not None):
            raise ValueError("state_from is set exactly on inputs of role 'state'")
        if (self.role == "constant") != (self.value is not None):
            raise ValueError("value is set exactly on inputs of role 'constant'")
        if self.role != "data" and not self.preprocessing.is_identity:
            raise ValueError(f"a {self.role} input takes no preprocessing")
        if self.drift == "channels" and self.preprocessing.image is None:
            raise ValueError("drift 'channels' describes image inputs; use 'values'")
        return self


class _Task(_Closed):
    version: Annotated[int, Field(ge=1)] = TASK_VERSION
    inputs: Annotated[list[InputRole], Field(min_length=1, max_length=16)]

    @model_validator(mode="after")
    def _inputs(self) -> _Task:
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError("task.inputs lists each input once")
        if not any(i.role == "data" for i in self.inputs):
            raise ValueError("at least one input must be of role 'data'")
        return self

    @property
    def data_inputs(self) -> list[InputRole]:
        return [i for i in self.inputs if i.role == "data"]

    @property
    def stateful(self) -> bool:
        return any(i.role == "state" for i in self.inputs)

    def outputs_named(self) -> list[str]:
        """Outputs this task reads by name (each must exist in the manifest)."""
        return [i.state_from for i in self.inputs if i.state_from]


class Classification(_Task):
    kind: Literal["classification"]
    output: TensorName
    scores: Literal["probabilities", "logits"] = "probabilities"
    """``logits`` get a softmax (or, multi-label, a sigmoid) on the device."""
    multi_label: bool = False
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    """Multi-label: a label is on when its probability reaches this."""

    def outputs_named(self) -> list[str]:
        return [*super().outputs_named(), self.output]


class RegressionOutput(_Closed):
    name: TensorName
    units: Annotated[list[Unit], Field(max_length=65536)] = []
    """One unit per value of the output (empty: unitless)."""


class Regression(_Task):
    kind: Literal["regression"]
    outputs: Annotated[list[RegressionOutput], Field(min_length=1, max_length=16)]

    def outputs_named(self) -> list[str]:
        return [*super().outputs_named(), *(o.name for o in self.outputs)]


class Anomaly(_Task):
    kind: Literal["anomaly"]
    output: TensorName
    higher_is_anomalous: bool = True
    threshold: float
    """Scores past this are anomalies; the packer takes it from the reference samples."""
    reference_quantile: Annotated[float, Field(gt=0, lt=1)] | None = None
    """The quantile of the reference samples' scores the threshold was set at."""

    def outputs_named(self) -> list[str]:
        return [*super().outputs_named(), self.output]


class Detection(_Task):
    kind: Literal["detection"]
    boxes: TensorName
    scores: TensorName
    classes: TensorName | None = None
    """Without it, ``scores`` holds one score per class and box."""
    box_format: Literal["xyxy", "xywh", "cxcywh"] = "xyxy"
    postprocess: Literal["none", "nms"] = "none"
    """``none``: the outputs are final detections; ``nms``: raw candidates the agent
    filters by score and non-maximum suppression."""
    score_threshold: Annotated[float, Field(ge=0, le=1)] = 0.25
    iou_threshold: Annotated[float, Field(gt=0, le=1)] = 0.45
    max_detections: Annotated[int, Field(ge=1, le=10_000)] = 100

    def outputs_named(self) -> list[str]:
        named = [self.boxes, self.scores, *([self.classes] if self.classes else [])]
        return [*super().outputs_named(), *named]


class Tensors(_Task):
    """Several outputs returned as they are (embeddings, multi-head models)."""

    kind: Literal["tensors"]


Task = Annotated[
    Classification | Regression | Anomaly | Detection | Tensors, Field(discriminator="kind")
]


def refuse_unknown(doc: Any) -> None:
    """Raise ``ValueError`` ("upgrade the agent") for a task newer than this code reads.

    Runs before validation, so the message is this one and not a schema error about a
    field or kind this version has never heard of.
    """
    if not isinstance(doc, dict):
        return
    version, kind = doc.get("version", TASK_VERSION), doc.get("kind")
    if isinstance(version, int) and version > TASK_VERSION:
        raise ValueError(
            f"the package declares task version {version} ({kind!r}); this agent reads task "
            f"versions up to {TASK_VERSION}: upgrade the agent"
        )
    if isinstance(kind, str) and kind not in KINDS:
        raise ValueError(
            f"task kind {kind!r} is not one this agent knows ({', '.join(KINDS)}): "
            "upgrade the agent"
        )
