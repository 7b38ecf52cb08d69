"""The packer's TOML spec file: everything about a model its file cannot say.

Example (a streaming voice-activity model)::

    name = "silero-vad"
    version = "5.0.0"

    [task]
    kind = "regression"
    outputs = [{ name = "output", units = ["probability"] }]

    [inputs.input]
    shape = [1, 512]            # pin the file's open dimensions
    [inputs.state]
    role = "state"
    state_from = "stateN"
    shape = [2, 1, 128]
    [inputs.sr]
    role = "constant"
    value = [16000]

    [outputs.stateN]
    shape = [2, 1, 128]

Command-line options win over the file.  Unknown keys are refused (a typo is an
error, not a silently ignored setting) and every tensor the spec names must
exist in the model.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet_contract import safezip
from edgefleet_contract.errors import PackageError
from edgefleet_contract.preprocess import Preprocessing
from edgefleet_contract.task import RegressionOutput

Dim = Annotated[int, Field(ge=-1, le=1_000_000)]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class InputSpec(_Closed):
    role: Literal["data", "state", "constant"] = "data"
    shape: Annotated[list[Dim], Field(max_length=8)] | None = None
    preprocessing: Preprocessing = Preprocessing()
    state_from: str | None = None
    initial: float = 0.0
    value: list[float] | None = None
    drift: Literal["values", "channels", "none"] | None = None


class OutputSpec(_Closed):
    shape: Annotated[list[Dim], Field(max_length=8)] | None = None


class TaskSpec(_Closed):
    kind: Literal["classification", "regression", "anomaly", "detection", "tensors"] | None = None
    output: str | None = None
    scores: str | None = None
    """Classification: ``probabilities`` | ``logits``; detection: the scores output."""
    multi_label: bool = False
    threshold: float | None = None
    outputs: list[RegressionOutput] | None = None
    higher_is_anomalous: bool = True
    threshold_quantile: Annotated[float, Field(gt=0, lt=1)] = 0.99
    boxes: str | None = None
    classes: str | None = None
    box_format: Literal["xyxy", "xywh", "cxcywh"] = "xyxy"
    postprocess: Literal["none", "nms"] = "none"
    score_threshold: float | None = None
    iou_threshold: float | None = None
    max_detections: int | None = None


class SelfTestSpec(_Closed):
    size: Annotated[int, Field(ge=1, le=256)] = 16
    atol: Annotated[float, Field(gt=0, le=1)] | None = None
    rtol: Annotated[float, Field(ge=0, le=1)] | None = None


class QuantizeSpec(_Closed):
    mode: Literal["none", "int8"] = "none"
    per_channel: bool = True
    min_agreement: Annotated[float, Field(ge=0, le=1)] = 0.99


class PackSpec(_Closed):
    name: str | None = None
    version: str | None = None
    labels: list[str] | None = None
    task: TaskSpec = TaskSpec()
    inputs: dict[str, InputSpec] = {}
    outputs: dict[str, OutputSpec] = {}
    self_test: SelfTestSpec = SelfTestSpec()
    quantize: QuantizeSpec = QuantizeSpec()
    embedding: str | None = None
    """The tensor the trainable dense head reads (see ``fleetctl models pack --embedding``)."""
    calibration_samples: Annotated[int, Field(ge=2, le=100_000)] = 500
    """How many calibration samples the self-test, the drift reference and the
    quantizer draw on (the first ones of the file)."""


def load_spec(path: Path | None) -> PackSpec:
    if path is None:
        return PackSpec()
    try:
        doc: dict[str, Any] = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PackageError(f"spec file {path}: {exc}") from exc
    try:
        return PackSpec.model_validate(doc)
    except ValidationError as exc:
        raise PackageError(f"spec file {path}: {safezip.first_error(exc)}") from exc
