"""A loaded, self-tested model: the one object the daemon and local apps predict with.

``Model.load`` verifies the package (hashes, manifest), opens the runtime the
manifest names, runs the self-test vectors through the same ``predict`` path
apps use and warms the batch-of-one shape.  After that ``predict`` does only
what it must per call: validate the batch, preprocess, run, pick the top-1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet_contract import interpret
from edgefleet_contract import task as tasks
from edgefleet_contract.errors import InputRejected, ModelError
from edgefleet_contract.messages import ModelRef
from edgefleet_contract.package import (
    MAX_PACKAGE_BYTES,
    Manifest,
    ModelPackage,
    TensorSpec,
    as_task,
    read_package,
)
from edgefleet_contract.preprocess import Scaler

from .backends import Backend, open_backend
from .selftest import check_self_test
from .tasks import Arrays, Inference, TaskRunner

MAX_BATCH = 4096
"""Rows per ``predict`` call; the local API has its own, usually smaller, limit."""
_INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}
_FLOAT32 = np.dtype(np.float32)


@dataclass(frozen=True, slots=True)
class Prediction:
    """Outputs for a batch: one row of probabilities and one top-1 per input row."""

    probabilities: npt.NDArray[np.float32]
    classes: npt.NDArray[np.intp]
    confidence: npt.NDArray[np.float32]
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


# The generated __init__ of a frozen dataclass goes through object.__setattr__ field by
# field (~1.6 µs, a tenth of the agent's own cost per call); the predict path fills the
# slots directly instead.  The instance is the same: frozen, equal, same repr.
_new_prediction = object.__new__
_SET_PROBABILITIES, _SET_CLASSES, _SET_CONFIDENCE, _SET_LABELS = (
    Prediction.__dict__[name].__set__
    for name in ("probabilities", "classes", "confidence", "labels")
)


def _prediction(
    probabilities: npt.NDArray[np.float32],
    classes: npt.NDArray[np.intp],
    confidence: npt.NDArray[np.float32],
    labels: tuple[str, ...],
) -> Prediction:
    p = _new_prediction(Prediction)
    _SET_PROBABILITIES(p, probabilities)
    _SET_CLASSES(p, classes)
    _SET_CONFIDENCE(p, confidence)
    _SET_LABELS(p, labels)
    return p


@dataclass(frozen=True, slots=True)
class SelfTestResult:
    max_error: float
    top1_agreement: float
    vectors: int


class Model:
    """Construct with :meth:`load` or :meth:`from_package`; safe to share between threads."""

    def __init__(self, package: ModelPackage, backend: Backend) -> None:
        self.package = package
        self.manifest: Manifest = package.manifest
        self.ref: ModelRef = package.ref
        self.backend = backend.name
        self.key = f"{self.manifest.name}@{self.manifest.version}"
        """``name@version``: what telemetry and the feedback cache file predictions under."""
        self._run = backend.run
        self.runner = TaskRunner(self.manifest, backend) if self.manifest.task else None
        self._task: tasks.Task | None = None
        if self.runner is not None:
            self._init_task(self.runner)
            return
        spec, out = self.manifest.inputs[0], self.manifest.outputs[0]
        self.features = spec.features
        self._labels = tuple(self.manifest.labels)
        # The contract's scaler, the one the trainer and the builder use.
        scaler = Scaler(self.manifest.preprocessing, (self.features,))
        self._scale, self._offset = scaler.gain, scaler.bias
        self._input_shape = tuple(spec.shape[1:])
        self._quantize = _quantizer(spec)
        self._dequantize = _dequantizer(out)
        self.self_test = self._run_self_test()
        self.predict(np.asarray(self.manifest.self_test.inputs[:1], dtype=np.float32))  # warm-up

    def _init_task(self, runner: TaskRunner) -> None:
        """A format-2 package: its runner does preprocessing, the task and the self-test."""
        first = self.manifest.input_spec(runner.task.data_inputs[0].name)
        self.features = first.features
        self._labels = tuple(self.manifest.labels)
        m = self.manifest
        subject = f"{m.name} {m.version} ({m.flavor}) on {self.backend}"
        self.self_test = SelfTestResult(*runner.self_test(subject))

    @property
    def task_kind(self) -> str:
        return self.runner.task.kind if self.runner else "classification"

    @property
    def simple(self) -> bool:
        """Whether :meth:`predict` serves this model: one data input, single-label classes."""
        if self.runner is None:
            return True
        t = self.runner.task
        return (
            isinstance(t, tasks.Classification)
            and not t.multi_label
            and len(t.data_inputs) == 1
            and not t.stateful
        )

    def infer(self, inputs: Any, state: Arrays | None = None) -> Inference:
        """Any package: named inputs (or one array), every output, the task's answers and,
        for a stateful model, the state its next call takes."""
        if self.runner is not None:
            return self.runner.run(inputs, state)
        prediction, rows = self.predict_rows(inputs)
        out = {self.manifest.outputs[0].name: prediction.probabilities}
        if self._task is None:  # the format-1 manifest read as a task, once
            self._task = as_task(self.manifest)
        results = interpret.results(self._task, out, self._labels)
        return Inference(
            out,
            results,
            {},
            rows.astype(np.float64),
            prediction.confidence.tolist(),
            prediction.classes.tolist(),
        )

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        threads: int = 1,
        max_bytes: int = MAX_PACKAGE_BYTES,
        served: bool = False,
    ) -> Model:
        """Read, verify and self-test the package at ``path`` (``served``: see
        :meth:`from_package`)."""
        package = read_package(Path(path), max_bytes=max_bytes)
        return cls.from_package(package, threads=threads, served=served)

    @classmethod
    def from_package(
        cls, package: ModelPackage, *, threads: int = 1, served: bool = False
    ) -> Model:
        """A model of a verified package.  ``served=True`` (a long-running server's model)
        keeps only what serving reads once the runtime is open and the self-test passed:
        the model's ``package`` holds no model file bytes (the runtime has its own copy of
        the graph and weights: 2.2 MiB of silero-vad's idle agent) and its manifest keeps
        one self-test vector (silero-vad's 16 are ~0.6 MiB of Python floats); how many
        the package has stays in ``self_test.vectors``."""
        model = cls(package, open_backend(package.manifest, package.model_bytes, threads=threads))
        if served:
            model._drop_load_only_data()
        return model

    def _drop_load_only_data(self) -> None:
        """Forget the model file's bytes and all self-test vectors but the first: they
        are read at load only.  The manifest stays a valid one (a self-test needs a
        vector); every holder of it (the package, the task runner) gets the new one."""
        m = self.manifest
        spec = m.self_test
        first = spec.model_copy(update={"inputs": spec.inputs[:1], "expected": spec.expected[:1]})
        self.manifest = m.model_copy(update={"self_test": first})
        self.package = replace(_without_model_file(self.package), manifest=self.manifest)
        if self.runner is not None:
            self.runner.manifest = self.manifest

    def __repr__(self) -> str:
        m = self.manifest
        return f"<Model {m.name} {m.version} {m.flavor} on {self.backend}>"

    def predict(self, batch: npt.ArrayLike) -> Prediction:
        """Predict raw feature rows ``(n, features)`` (or one row ``(features,)``).

        Raises :class:`InputRejected` (a :class:`ModelError`) for input a caller
        got wrong (shape, type, NaN); its message says what was expected.
        """
        if self.runner is not None:
            return self._task_prediction(batch)[0]
        return self._finish(self._run(self._prepare(batch)[1]))

    def _task_prediction(self, batch: npt.ArrayLike) -> tuple[Prediction, npt.NDArray[np.float32]]:
        assert self.runner is not None
        if not self.simple:
            raise InputRejected(
                f"{self.manifest.name} is a {self.task_kind} model with "
                f"{len(self.runner.task.data_inputs)} data input(s); ask for its outputs with "
                'infer() (the local API: {"inputs": {"name": ...}})'
            )
        result = self.runner.run(batch)
        task = self.runner.task
        assert isinstance(task, tasks.Classification)
        # The arrays of a Prediction, from the float32 class scores (the runner answers one
        # sample in plain Python floats).
        p = interpret.class_scores(task, result.outputs)
        classes = p.argmax(axis=1)
        confidence = p.take(classes) if len(p) == 1 else p.max(axis=1)
        labels = tuple(self._labels[i] for i in classes.tolist())
        rows = result.drift_rows if result.drift_rows is not None else np.zeros((len(p), 0))
        return _prediction(p, classes, confidence, labels), rows.astype(np.float32)

    def predict_rows(self, batch: npt.ArrayLike) -> tuple[Prediction, npt.NDArray[np.float32]]:
        """Like :meth:`predict`, plus the validated raw rows as float32 ``(n, features)``.

        The rows are what telemetry's drift statistics need (raw features, before
        preprocessing); returning them saves the caller converting the batch again.
        They may be a view of ``batch``: copy before keeping them past the next change.
        """
        if self.runner is not None:
            return self._task_prediction(batch)
        rows, x = self._prepare(batch)
        return self._finish(self._run(x)), rows

    def _finish(self, out: npt.NDArray[Any]) -> Prediction:
        probabilities = self._dequantize(out) if self._dequantize else out
        classes = probabilities.argmax(axis=1)
        labels = self._labels
        if len(classes) == 1:  # one reading per call, the usual case on a device
            # The top-1 probability is the row's maximum (NaN included: argmax stops at the
            # first NaN, which is what max returns); with one row, the class is its index
            # into the flattened output, and take() is a quarter of the cost of max(axis=1).
            return _prediction(
                probabilities, classes, probabilities.take(classes), (labels[classes.item(0)],)
            )
        return _prediction(
            probabilities,
            classes,
            probabilities.max(axis=1),
            tuple([labels[i] for i in classes.tolist()]),
        )

    def _prepare(self, batch: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
        """The raw rows as float32 ``(n, features)`` and the runtime's input tensor for them."""
        try:
            x = np.asarray(batch)
        except (ValueError, TypeError) as exc:
            raise InputRejected(f"input is not a numeric array: {exc}") from exc
        dtype = x.dtype
        if dtype != _FLOAT32 and dtype.kind not in "fiub":
            raise InputRejected(f"input must be numbers, got dtype {dtype}")
        ndim = x.ndim
        if ndim == 1:
            x = x.reshape(1, -1)
        elif ndim > 2:
            x = x.reshape(x.shape[0], -1)
        elif ndim == 0:
            raise self._bad_shape(batch)
        n, width = x.shape
        if width != self.features or not 1 <= n <= MAX_BATCH:
            raise self._bad_shape(batch)
        if dtype != _FLOAT32:
            with np.errstate(over="ignore"):  # out-of-range values become inf, refused below
                x = x.astype(np.float32)
        rows = x
        if self._scale is not None:
            x = x * self._scale
        if self._offset is not None:
            x = x + self._offset
        # count_nonzero is the same test as isfinite(x).all() at half the cost on a row.
        if np.count_nonzero(np.isfinite(x)) != x.size:
            raise InputRejected("input has NaN or infinite values")
        if len(self._input_shape) > 1:
            x = x.reshape(n, *self._input_shape)
        return rows, self._quantize(x) if self._quantize else x

    def _bad_shape(self, batch: npt.ArrayLike) -> InputRejected:
        return InputRejected(
            f"input has shape {tuple(np.shape(batch))}; {self.manifest.name} expects "
            f"(rows, {self.features}) with 1 to {MAX_BATCH} rows"
        )

    def _run_self_test(self) -> SelfTestResult:
        spec = self.manifest.self_test
        m = self.manifest
        subject = f"{m.name} {m.version} ({m.flavor}) on {self.backend}"
        try:
            outputs = self.predict(np.asarray(spec.inputs, dtype=np.float32)).probabilities
        except ModelError as exc:
            raise ModelError(f"{subject}: the self-test could not run: {exc}") from exc
        error, agreement = check_self_test(spec, outputs, subject=subject)
        return SelfTestResult(error, agreement, len(spec.inputs))


def _without_model_file(package: ModelPackage) -> ModelPackage:
    """``package`` without the model file's bytes; every other member (a trainable head's
    weights, its backbone, the drift PCA) stays, since training and telemetry read them."""
    m = package.manifest
    trainable = m.trainable
    if trainable is not None and m.model_file in (trainable.file, trainable.backbone_file):
        return package
    members = {name: data for name, data in package.members.items() if name != m.model_file}
    return replace(package, members=members)


def _quantizer(spec: TensorSpec) -> Any:
    """Maps float rows onto an int8/uint8 input tensor, or None for float inputs."""
    q = spec.quantization
    if q is None:
        return None
    lo, hi = _INT_RANGE[spec.dtype]
    dtype = np.int8 if spec.dtype == "int8" else np.uint8
    inverse, zero = np.float32(1.0 / q.scale), np.float32(q.zero_point)

    def quantize(x: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        return np.asarray(np.clip(np.rint(x * inverse) + zero, lo, hi), dtype=dtype)

    return quantize


def _dequantizer(spec: TensorSpec) -> Any:
    """Maps an int8/uint8 output tensor back to float probabilities, or None."""
    q = spec.quantization
    if q is None:
        return None
    scale, zero = np.float32(q.scale), np.float32(q.zero_point)

    def dequantize(out: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        return (out.astype(np.float32) - zero) * scale

    return dequantize
