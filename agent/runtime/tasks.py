"""Serving a format-2 package: several named inputs and outputs, a task, state.

Each call takes the data inputs by name (a bare array when there is one),
runs them through the declared preprocessing (:func:`~edgefleet_contract.
preprocess.prepare`, the same function the packer calibrated with), feeds
state inputs from the caller's session (or their initial value) and constant
inputs from the manifest, and returns every output, the task's reading of it
and the state for the session's next call.  The self-test replays the
packer's vectors one call at a time, state given explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet_contract import interpret
from edgefleet_contract import task as tasks
from edgefleet_contract.errors import InputRejected, ModelError, SelfTestFailed
from edgefleet_contract.package import Manifest
from edgefleet_contract.preprocess import InputPlan, drift_view, raw_shape

from .backends import Backend

Arrays = dict[str, npt.NDArray[Any]]


DriftRows = npt.NDArray[np.float64] | None


@dataclass(slots=True)
class Inference:
    """One call's answer.  Not frozen: a frozen dataclass sets each field through
    ``object.__setattr__``, a measurable share of a small model's call; treat it as
    read-only all the same."""

    outputs: Arrays
    """Every output by name, int8/uint8 ones dequantized."""
    results: list[dict[str, Any]]
    """The task's answer per sample (:func:`edgefleet_contract.interpret.results`)."""
    state: Arrays
    """The state inputs for the session's next call."""
    drift_source: DriftRows | Callable[[], DriftRows]
    """The drift features (:attr:`drift_rows`), or the function that computes them when
    first asked: a served call's statistics are computed only if telemetry keeps them."""
    confidence: list[float] | None = None
    """Single-label classes: each sample's top-1 probability (plain floats, as answered)."""
    classes: list[int] | None = None
    """Single-label classes: each sample's top-1 class index."""
    samples: npt.NDArray[np.float32] | None = None
    """A package with a trainable head: each sample's raw input as flat float32 rows (what
    feedback stores and its backbone turns into embeddings when a round trains)."""

    @property
    def drift_rows(self) -> DriftRows:
        """Per sample, the drift features of its data inputs (what telemetry bins)."""
        source = self.drift_source
        if source is None or isinstance(source, np.ndarray):
            return source
        rows = source()
        self.drift_source = rows
        return rows

    def __len__(self) -> int:
        return len(self.results)


class TaskRunner:
    """One format-2 model's per-call path, worked out at load.

    What a call needs and the manifest fixes (each data input's compiled preprocessing,
    the constant and initial state tensors, which outputs to dequantize and feed back,
    how the task reads its outputs) is settled here once, so :meth:`run` touches no
    pydantic model and builds no plan: it costs about what a format-1 call does.
    """

    def __init__(self, manifest: Manifest, backend: Backend) -> None:
        assert manifest.task is not None
        self.manifest = manifest
        self.task: tasks.Task = manifest.task
        self.stateful = self.task.stateful
        self._run = backend.run_all
        self._specs = {t.name: t for t in manifest.inputs}
        self._data = self.task.data_inputs
        self._names = [r.name for r in self._data]
        self._plans = [
            (
                r.name,
                InputPlan(
                    r.preprocessing,
                    shape=self._specs[r.name].shape,
                    dtype=self._specs[r.name].dtype,
                    quantization=self._specs[r.name].quant_params,
                    name=r.name,
                ),
                r.preprocessing,
                r.drift,
            )
            for r in self._data
        ]
        self._constants = {
            i.name: _frozen(
                np.asarray(i.value, dtype=self._specs[i.name].dtype).reshape(
                    self._specs[i.name].shape
                )
            )
            for i in self.task.inputs
            if i.role == "constant"
        }
        self._state = [i for i in self.task.inputs if i.role == "state"]
        self._initial = {
            i.name: _frozen(
                np.full(self._specs[i.name].shape, i.initial, dtype=self._specs[i.name].dtype)
            )
            for i in self._state
        }
        self._feedback = [
            (i.name, i.state_from or "", np.dtype(self._specs[i.name].dtype)) for i in self._state
        ]
        self._drifting = any(drift != "none" for _, _, _, drift in self._plans)
        self._labels = tuple(manifest.labels)
        trainable = manifest.trainable
        self._keeps_samples = trainable is not None and trainable.embedding is not None
        self._dequantize = {
            t.name: (np.float32(t.quantization.scale), np.float32(t.quantization.zero_point))
            for t in manifest.outputs
            if t.quantization is not None
        }
        task = self.task
        self._classes = isinstance(task, tasks.Classification)
        self._single_label = isinstance(task, tasks.Classification) and not task.multi_label
        self._output = task.output if isinstance(task, tasks.Classification) else ""
        self._logits = isinstance(task, tasks.Classification) and task.scores == "logits"

    def initial_state(self) -> Arrays:
        """Each state input's initial value (read-only: a call never writes its inputs)."""
        return dict(self._initial)

    def run(
        self, inputs: Mapping[str, Any] | npt.ArrayLike, state: Arrays | None = None
    ) -> Inference:
        feeds, raws = self._tensors(inputs, state)
        outputs = self._run(feeds)
        if self._dequantize:
            outputs = {name: self._float(name, v) for name, v in outputs.items()}
        nxt = {
            name: np.asarray(outputs[source]).astype(dtype, copy=False)
            for name, source, dtype in self._feedback
        }
        # The drift features wait until asked for: the telemetry window samples the rows it
        # keeps, and once its reservoir is full most calls' statistics would go unused.
        drift = (lambda: self._drift(raws)) if self._drifting else None
        confidence = classes = None
        task = self.task
        one = self._one_class(outputs) if self._single_label else None
        if one is not None:
            results, classes, confidence = one
        elif self._classes:
            assert isinstance(task, tasks.Classification)
            p = interpret.class_scores(task, outputs)  # once: the answers and telemetry share it
            top = None
            if self._single_label:
                top = p.argmax(axis=1)
                classes = top.tolist()
                confidence = (p.take(top) if len(p) == 1 else p.max(axis=1)).tolist()
            results = interpret.classification_results(task, p, self._labels, top=top)
        else:
            results = interpret.results(task, outputs, self._labels)
        samples = None
        if self._keeps_samples and raws:
            samples = raws[0].reshape(len(raws[0]), -1).astype(np.float32, copy=False)
        return Inference(outputs, results, nxt, drift, confidence, classes, samples)

    def _one_class(
        self, outputs: Arrays
    ) -> tuple[list[dict[str, Any]], list[int], list[float]] | None:
        """A single-label classifier's answer for one sample, worked out in plain Python
        (the softmax in float64); None for a batch or an output that is not all finite,
        which the numpy path answers.  A call's Python runs on CPU caches the model just
        went through: each numpy call on ~10 scores then costs 10-40 µs, and the numpy
        softmax, argmax and answer were ~10% of a 1 ms ResNet's call.  The class is the
        argmax of the output itself (the logits, for a softmax: the same order)."""
        raw = outputs[self._output]
        if (raw.ndim > 1 and raw.shape[0] != 1) or raw.size == 0:
            return None
        values: list[float] = raw.ravel().tolist()
        if self._logits:
            top = max(values)
            exps = [math.exp(v - top) for v in values]
            total = sum(exps)
            p = [v / total for v in exps]
        else:
            p, total = values, sum(values)
        if not math.isfinite(total):
            return None
        c = max(range(len(values)), key=values.__getitem__)
        return [interpret.class_answer(self._labels, c, p)], [c], [p[c]]

    def feeds(
        self, inputs: Mapping[str, Any] | npt.ArrayLike, state: Arrays | None = None
    ) -> tuple[Arrays, list[npt.NDArray[np.float64]]]:
        """Every runtime input of one call, and the drift features of its data inputs."""
        feeds, raws = self._tensors(inputs, state)
        return feeds, self._views(raws)

    def _views(self, raws: list[npt.NDArray[Any]]) -> list[npt.NDArray[np.float64]]:
        """The drift features of each data input that declares some, from its raw samples."""
        return [
            drift_view(raw, prep, drift)
            for raw, (_, _, prep, drift) in zip(raws, self._plans, strict=True)
            if drift != "none"
        ]

    def _drift(self, raws: list[npt.NDArray[Any]]) -> DriftRows:
        """One call's drift rows: its inputs' features side by side (None if their sample
        counts differ)."""
        views = self._views(raws)
        if len(views) == 1:
            return views[0]
        sizes = {len(v) for v in views}
        return np.concatenate(views, axis=1) if views and len(sizes) == 1 else None

    def _tensors(
        self, inputs: Mapping[str, Any] | npt.ArrayLike, state: Arrays | None
    ) -> tuple[Arrays, list[npt.NDArray[Any]]]:
        """Every runtime input of one call, and each data input's raw samples (float32, or
        a camera's small integers: :meth:`InputPlan.samples`)."""
        named = self._named(inputs)
        feeds: Arrays = dict(self._constants)
        raws = []
        for name, plan, _, _ in self._plans:
            raw = plan.samples(named[name])
            raws.append(raw)
            feeds[name] = plan.tensor(raw)
        if self._state:
            current = state if state is not None else self._initial
            for role in self._state:
                value = current.get(role.name)
                if value is None:
                    raise InputRejected(f"no state for input {role.name!r}")
                feeds[role.name] = value
        return feeds, raws

    def _named(self, inputs: Mapping[str, Any] | npt.ArrayLike) -> Mapping[str, Any]:
        if not isinstance(inputs, np.ndarray) and isinstance(inputs, Mapping):
            known = set(self._names)
            unknown = sorted(set(inputs) - known)
            missing = sorted(known - set(inputs))
            if unknown or missing:
                raise InputRejected(
                    f"{self.manifest.name} takes the inputs {sorted(known)}"
                    + (f"; unknown: {unknown}" if unknown else "")
                    + (f"; missing: {missing}" if missing else "")
                )
            return inputs
        if len(self._names) != 1:
            raise InputRejected(
                f"{self.manifest.name} has several inputs; send them by name: {self._names}"
            )
        return {self._names[0]: inputs}

    def _float(self, name: str, value: npt.NDArray[Any]) -> npt.NDArray[Any]:
        q = self._dequantize.get(name)
        if q is None:
            return value
        scale, zero = q
        return (np.asarray(value, dtype=np.float32) - zero) * scale

    # ------------------------------------------------------------ self-test --

    def self_test(self, subject: str) -> tuple[float, float, int]:
        """Replay the manifest's vectors; raise :class:`SelfTestFailed` naming the worst."""
        spec = self.manifest.self_test
        fed = [i for i in self.task.inputs if i.role != "constant"]
        worst, worst_at, agree = 0.0, -1, []
        for k, (row, expected) in enumerate(zip(spec.inputs, spec.expected, strict=True)):
            named, state = self._unpack(fed, row)
            try:
                out = self.run(named, state)
            except ModelError as exc:
                raise ModelError(f"{subject}: the self-test could not run: {exc}") from exc
            got = np.concatenate(
                [
                    np.asarray(out.outputs[t.name], dtype=np.float64).reshape(-1)
                    for t in self.manifest.outputs
                ]
            )
            want = np.asarray(expected, dtype=np.float64)
            if got.shape != want.shape:
                raise SelfTestFailed(
                    f"{subject}: self-test vector {k} gave {got.size} output values, "
                    f"expected {want.size}"
                )
            excess = np.abs(got - want) - (spec.atol + spec.rtol * np.abs(want))
            excess = np.where(np.isfinite(got), excess, np.inf)
            if float(excess.max(initial=-np.inf)) > 0 and (worst_at < 0 or excess.max() > worst):
                worst, worst_at = float(excess.max()), k
            if out.classes is not None:
                agree.append(self._expected_class(want) == out.classes[0])
        agreement = float(np.mean(agree)) if agree else 1.0
        if worst_at >= 0:
            raise SelfTestFailed(
                f"{subject} failed its self-test, refusing the model: vector {worst_at} is "
                f"{worst:.3g} outside the tolerance (atol {spec.atol:g}, rtol {spec.rtol:g})"
            )
        if agreement < spec.min_top1_agreement:
            raise SelfTestFailed(
                f"{subject} failed its self-test, refusing the model: top-1 agrees on "
                f"{agreement:.0%} of vectors, need {spec.min_top1_agreement:.0%}"
            )
        return max(worst, 0.0), agreement, len(spec.inputs)

    def _unpack(
        self, fed: list[tasks.InputRole], row: list[float]
    ) -> tuple[dict[str, Any], Arrays]:
        named: dict[str, Any] = {}
        state: Arrays = {}
        at = 0
        for role in fed:
            spec = self._specs[role.name]
            shape = raw_shape(role.preprocessing, spec.shape)
            size = math.prod(shape)
            value = np.asarray(row[at : at + size], dtype=np.float32).reshape(shape)
            at += size
            if role.role == "state":
                state[role.name] = value.astype(spec.dtype)
            else:
                named[role.name] = value[None] if spec.batched else value
        return named, state

    def _expected_class(self, flat: npt.NDArray[np.float64]) -> int:
        assert isinstance(self.task, tasks.Classification)
        at = 0
        for t in self.manifest.outputs:
            size = t.features if t.batched else math.prod(t.shape)
            if t.name == self.task.output:
                return int(np.argmax(flat[at : at + size]))
            at += size
        return -1


def _frozen(value: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A tensor every call shares: read-only, so no caller can change it for the next."""
    value.flags.writeable = False
    return value
