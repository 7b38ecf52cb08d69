"""The model a device serves: one :class:`ModelService` per daemon, shared by every caller.

The daemon, the local prediction API, ``edge-agent predict``, the OTA installer
and federated training all reach the active model through this object, so a
model swap is one atomic assignment and every prediction is measured for
telemetry the same way.  Embedding it in your own process::

    from pathlib import Path
    from agent.serving import ModelService

    service = ModelService(threads=2)
    service.replace(Path("digits-cnn-1.0.0-onnx-int8.efpkg"))   # verify, self-test, activate
    prediction = service.predict(rows)                          # (n, features) raw floats
    prediction.labels, prediction.classes, prediction.confidence
    window = service.snapshot()                                 # latency, classes, drift

Loading never disturbs the active model: :meth:`ModelService.load` verifies
the package and runs its self-test on this device's runtime, and only
:meth:`ModelService.activate` swaps, so a corrupt or silently-wrong update is
refused while the previous model keeps answering.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy.typing as npt

from edgefleet_contract.errors import ModelError, NotFound
from edgefleet_contract.messages import ShadowStats
from edgefleet_contract.multivariate import PcaReference, read_pca
from edgefleet_contract.summary import summarize

from .config import DriftSettings
from .drift_monitor import AlertPolicy
from .fields import carried_over
from .metrics import InferenceRecorder, WindowStats
from .runtime import Model, Prediction
from .runtime.tasks import Arrays, Inference
from .samples import PredictionCache, SampleStore
from .shadow import ShadowRunner

RecorderFactory = Callable[[Model], InferenceRecorder]
log = logging.getLogger(__name__)


def recorder_for(model: Model) -> InferenceRecorder:
    """The default recorder: latency, confidence, classes, and drift tests against the
    package's reference statistics (raw features, as the builder computed them)."""
    m = model.manifest
    return InferenceRecorder(
        m.name, m.version, labels=m.labels, reference=m.drift, pca=package_pca(model)
    )


def package_pca(model: Model) -> PcaReference | None:
    """The package's PCA reference for the multivariate drift test; a broken one is
    logged and skipped (the per-feature tests still run)."""
    try:
        return read_pca(model.package.members)
    except ModelError as exc:
        log.warning("%s: no multivariate drift test: %s", model.manifest.name, exc)
        return None


def drift_recorders(settings: DriftSettings, baseline_file: Path | None) -> RecorderFactory:
    """Recorders that test drift as ``settings`` say and keep the burn-in baseline in
    ``baseline_file`` (one file: a new install starts a new baseline)."""
    policy = carried_over(AlertPolicy, settings)

    def make(model: Model) -> InferenceRecorder:
        m = model.manifest
        return InferenceRecorder(
            m.name,
            m.version,
            labels=m.labels,
            reference=m.drift,
            min_drift_samples=settings.min_samples,
            drift_interval_s=settings.interval_s,
            drift_policy=policy,
            baseline_file=baseline_file,
            pca=package_pca(model),
        )

    return make


class NoModel(ModelError):
    """Nothing is being served yet (first boot without a model, or every load refused)."""


class ModelService:
    """Thread-safe holder of the active :class:`Model` and its inference recorder.

    ``recorder`` makes a fresh recorder for each activated model (a window
    never mixes two models' numbers); ``None`` turns metrics off.  ``samples``
    and ``prediction_cache`` enable :meth:`feedback`: recent predictions are
    remembered by id so ground truth can be stored as labelled samples.
    """

    def __init__(
        self,
        threads: int = 1,
        recorder: RecorderFactory | None = recorder_for,
        *,
        samples: SampleStore | None = None,
        prediction_cache: int = 10_000,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not 1 <= threads <= 256:
            raise ModelError(f"threads must be between 1 and 256, got {threads}")
        self.threads = threads
        self._make_recorder = recorder
        self._samples = samples
        self._cache = PredictionCache(prediction_cache)
        self._clock = clock
        self._lock = threading.Lock()
        # (model, recorder) swapped as one tuple: the predict path reads it once, lock-free.
        self._active: tuple[Model, InferenceRecorder | None] | None = None
        self._sessions = Sessions()
        self._shadow: ShadowRunner | None = None
        self.swaps = 0
        """Models activated since start (telemetry and tests watch it)."""

    # -------------------------------------------------------------- model --

    @property
    def model(self) -> Model | None:
        active = self._active
        return active[0] if active else None

    def load(self, path: Path) -> Model:
        """Read, verify the hashes of and self-test the package at ``path``; do not activate.

        Raises a :class:`ModelError` subclass whose message says what is wrong
        (unreadable file, hash mismatch, self-test outside tolerance, runtime
        missing).  The model's ``package`` keeps every member but the model file,
        which its runtime holds already, and one self-test vector
        (:meth:`Model.from_package`).
        """
        try:
            return Model.load(Path(path), threads=self.threads, served=True)
        except ModelError:
            raise
        except Exception as exc:  # a runtime library failing in a way we did not foresee
            raise ModelError(f"cannot load model package {path}: {exc}") from exc

    def activate(self, model: Model) -> Model | None:
        """Serve ``model`` from now on; returns the model it replaced (or None)."""
        recorder = self._make_recorder(model) if self._make_recorder else None
        with self._lock:
            previous = self._active
            self._active = (model, recorder)
            self.swaps += 1
        return previous[0] if previous else None

    def replace(self, path: Path) -> Model:
        """Load and activate; on any error the previous model keeps serving."""
        model = self.load(path)
        self.activate(model)
        return model

    # ------------------------------------------------------------- shadow --

    @property
    def shadow(self) -> ShadowRunner | None:
        return self._shadow

    def start_shadow(self, candidate: Model, *, capacity: int | None = None) -> ShadowRunner:
        """Run ``candidate`` (loaded and self-tested by :meth:`load`) beside the active model
        on every input from now on; its answers are compared, never returned."""
        kw = {} if capacity is None else {"capacity": capacity}
        runner = ShadowRunner(candidate, clock=self._clock, **kw).start()
        with self._lock:
            previous, self._shadow = self._shadow, runner
        if previous is not None:
            previous.stop()
        return runner

    def stop_shadow(self) -> ShadowRunner | None:
        """End the shadow run (its last window can still be read from the returned runner)."""
        with self._lock:
            runner, self._shadow = self._shadow, None
        if runner is not None:
            runner.stop()
        return runner

    def _offer_shadow(
        self, rows: npt.NDArray[Any], prediction: Prediction, ids: Sequence[str] = ()
    ) -> None:
        shadow = self._shadow
        if shadow is not None:
            shadow.offer(rows, prediction.classes.tolist(), ids)

    # ------------------------------------------------------------ predict --

    def predict(self, batch: npt.ArrayLike) -> Prediction:
        """Predict raw feature rows ``(n, features)`` or one row; recorded for telemetry.

        Raises :class:`NoModel` when nothing is served and :class:`ModelError`
        for input the caller got wrong (the message says what was expected).
        """
        prediction, rows, _ = self._predict(batch)
        self._offer_shadow(rows, prediction)
        return prediction

    def predict_tracked(self, batch: npt.ArrayLike) -> tuple[Prediction, list[str]]:
        """Like :meth:`predict`, plus one id per row that :meth:`feedback` can refer to."""
        prediction, rows, model = self._predict(batch)
        version = model.key
        ids = []
        for row, predicted in zip(rows, prediction.classes.tolist(), strict=True):
            prediction_id = new_id()
            self._cache.put(prediction_id, row, predicted, version)
            ids.append(prediction_id)
        self._offer_shadow(rows, prediction, ids)
        return prediction, ids

    def _predict(self, batch: npt.ArrayLike) -> tuple[Prediction, npt.NDArray[Any], Model]:
        active = self._active
        if active is None:
            raise NoModel("no model is loaded on this device yet")
        model, recorder = active
        clock = self._clock
        start = clock()
        try:
            # The rows come back as the model validated them: raw float32 features, which
            # is what drift is scored on, without converting the batch a second time.
            prediction, rows = model.predict_rows(batch)
        except ModelError:
            if recorder is not None:
                recorder.record_error()
            raise
        elapsed = clock() - start
        if recorder is None:
            pass
        elif len(rows) == 1:  # the common case on a device: one reading, one answer
            # rows is (1, features): the recorder takes it as it is, without a row view.
            recorder.record(
                elapsed, prediction.confidence.item(0), prediction.classes.item(0), rows
            )
        else:
            per_row = elapsed / len(rows)
            record = recorder.record
            for row, confidence, predicted in zip(
                rows, prediction.confidence.tolist(), prediction.classes.tolist(), strict=True
            ):
                record(per_row, confidence, predicted, row)
        return prediction, rows, model

    def infer(self, inputs: Any, session: str | None = None) -> tuple[Inference, str | None]:
        """Any model's outputs and task answers (several inputs, any task); recorded.

        A stateful model keeps its state per ``session``: a call without one opens a
        new session, whose id comes back for the next call.  Sessions live as long as
        the model serves, at most :data:`MAX_SESSIONS` of them (the least recently used
        is forgotten first).  Calls of one session must not overlap.
        """
        active = self._active
        if active is None:
            raise NoModel("no model is loaded on this device yet")
        model, recorder = active
        runner = model.runner
        stateful = runner is not None and runner.stateful
        if stateful:
            session = session or new_id()
            state = self._sessions.get(model, session)
        else:
            session, state = None, None
        start = self._clock()
        try:
            result = model.infer(inputs, state)
        except ModelError:
            if recorder is not None:
                recorder.record_error()
            raise
        elapsed = self._clock() - start
        if stateful and session is not None:
            self._sessions.put(model, session, result.state)
        if recorder is not None:
            _record(recorder, elapsed, result)
        if result.classes is not None:  # single-label classes: an id per answer for feedback
            version = model.key
            # What feedback stores to train on: a head's raw inputs, a format-1 model's rows;
            # any other model trains on nothing, so nothing is cached for it.
            rows: npt.NDArray[Any] | None = result.samples
            if rows is None and runner is None:
                rows = result.drift_rows
            answers = zip(result.results, result.classes, strict=True)
            for i, (answer, predicted) in enumerate(answers):
                prediction_id = new_id()
                row = None if rows is None else rows[i]  # None: nothing to train on
                self._cache.put(prediction_id, row, predicted, version)
                answer["id"] = prediction_id
            shadow = self._shadow
            if shadow is not None and not stateful:
                ids = [str(answer["id"]) for answer in result.results]
                shadow.offer_inputs(inputs, result.classes, ids)
        return result, session

    # ----------------------------------------------------------- feedback --

    def feedback(self, prediction_id: str, label: str | int) -> bool:
        """Store ground truth for an earlier prediction as a labelled sample.

        ``label`` is a label name or a class index.  Returns whether the model
        had predicted it.  Raises :class:`NotFound` for an unknown or expired
        id (each id can be used once) and :class:`ModelError` for a label the
        model does not have.
        """
        model = self.model
        if model is None:
            raise NoModel("no model is loaded on this device yet")
        labels = model.manifest.labels
        index = _label_index(labels, label)
        cached = self._cache.pop(prediction_id)
        if cached is None:
            raise NotFound(
                f"unknown or expired prediction id {prediction_id[:64]!r}: feedback must name an "
                "id returned by a recent /v1/predict, once"
            )
        # A format-2 model's cached row is its drift view, not a sample it could train on,
        # unless the package has a trainable head (then it is the raw input).
        trainable = model.manifest.trainable
        if self._samples is not None and (model.runner is None or trainable is not None):
            self._samples.add(cached.features, index, cached.model_version)
        correct = cached.predicted == index
        shadow = self._shadow
        if shadow is not None:
            shadow.label_arrived(prediction_id, index, correct)
        active = self._active
        # Only the model that made the prediction is credited or blamed for it: a rollout's
        # accuracy gate reads the new version's feedback, and ground truth arriving after a
        # switch for an answer of the old model must not hide (or fake) a regression.
        if active is not None and active[1] is not None and cached.model_version == active[0].key:
            active[1].record_feedback(correct)
        return correct

    # ---------------------------------------------------------- telemetry --

    def shadow_snapshot(self) -> ShadowStats | None:
        """The shadow run's window since the last one (None: no shadow run)."""
        shadow = self._shadow
        return shadow.snapshot() if shadow is not None else None

    def snapshot(self) -> WindowStats | None:
        """The active model's window since the last snapshot (None without a model)."""
        active = self._active
        if active is None or active[1] is None:
            return None
        return active[1].snapshot()


MAX_SESSIONS = 1024
_IDS: list[str] = []
"""Prediction and session ids made ahead, :data:`_ID_BATCH` at a time (see :func:`new_id`)."""
_ID_BATCH = 256
os.register_at_fork(after_in_child=_IDS.clear)  # a forked child never reuses its parent's


def new_id() -> str:
    """A fresh unguessable id: ``secrets.token_urlsafe(12)`` (96 random bits, 16 characters),
    taken from a pool made 256 at a time.  Made one per call, right after a model call has
    pushed the base64 and urandom code out of the CPU caches, each cost 25-35 µs here;
    ``list.pop`` is atomic, so two threads never get the same one."""
    try:
        return _IDS.pop()
    except IndexError:
        _IDS.extend([secrets.token_urlsafe(12) for _ in range(_ID_BATCH)])
        return _IDS.pop()


class Sessions:
    """State of stateful models per client session, bounded, dropped on a model swap."""

    def __init__(self, limit: int = MAX_SESSIONS) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._model: Model | None = None
        self._states: OrderedDict[str, Arrays] = OrderedDict()
        self.evicted = 0
        """Sessions forgotten because the limit was reached (their next call starts over)."""

    def get(self, model: Model, session: str) -> Arrays | None:
        with self._lock:
            if self._model is not model:
                self._model, self._states = model, OrderedDict()
            state = self._states.get(session)
            if state is not None:
                self._states.move_to_end(session)
            return state

    def put(self, model: Model, session: str, state: Arrays) -> None:
        with self._lock:
            if self._model is not model:
                return  # the model was swapped during the call: its state means nothing now
            self._states[session] = state
            self._states.move_to_end(session)
            while len(self._states) > self._limit:
                self._states.popitem(last=False)
                self.evicted += 1


def _record(recorder: InferenceRecorder, elapsed: float, result: Inference) -> None:
    classes, confidence = result.classes, result.confidence
    n = len(classes) if classes is not None else max(len(result), 1)
    if n == 1:  # one sample per call, the usual case: the recorder takes the (1, w) rows
        # ... and computes them only if its drift reservoir keeps this call.
        rows = result.drift_source
        if classes is not None and confidence is not None:
            recorder.record(elapsed, confidence[0], classes[0], rows)
        else:
            recorder.record(elapsed, None, None, rows)
        return
    rows = result.drift_rows
    per_row = elapsed / n
    for i in range(n):
        row = rows[i] if rows is not None and i < len(rows) else None
        if classes is not None and confidence is not None:
            recorder.record(per_row, confidence[i], classes[i], row)
        else:
            recorder.record(per_row, None, None, row)


def _label_index(labels: Sequence[str], label: str | int) -> int:
    if isinstance(label, bool):
        raise ModelError("label must be a label name or a class index, not a boolean")
    if isinstance(label, int):
        if 0 <= label < len(labels):
            return label
        raise ModelError(f"class index {label} is out of range: the model has {len(labels)}")
    try:
        return list(labels).index(label)
    except ValueError:
        shown = ", ".join(repr(x) for x in labels[:20]) + (" ..." if len(labels) > 20 else "")
        raise ModelError(f"unknown label {label[:64]!r}; the model's labels are {shown}") from None


def describe(model: Model) -> dict[str, object]:
    """What ``GET /v1/model`` and ``edge-agent status`` show about a model."""
    m = model.manifest
    return {
        **summarize(m, size=model.package.size),
        # a served model's manifest keeps one of its vectors (Model.from_package)
        "self_test_vectors": model.self_test.vectors,
        "name": m.name,
        "version": m.version,
        "sha256": model.ref.sha256,
        "runtime": m.runtime,
        "flavor": m.flavor,
        "backend": model.backend,
        "features": model.features,
        "input_shape": list(m.inputs[0].shape),
        "labels": list(m.labels),
        "self_test": {
            "vectors": model.self_test.vectors,
            "max_error": model.self_test.max_error,
            "top1_agreement": model.self_test.top1_agreement,
        },
    }


def prediction_rows(prediction: Prediction, ids: Sequence[str] = ()) -> list[dict[str, object]]:
    """One JSON object per row: what ``/v1/predict`` and ``edge-agent predict`` print."""
    probabilities = prediction.probabilities.tolist()
    classes = prediction.classes.tolist()
    confidence = prediction.confidence.tolist()
    rows: list[dict[str, object]] = []
    for i, label in enumerate(prediction.labels):
        row: dict[str, object] = {"id": ids[i]} if ids else {}
        row.update(
            label=label,
            class_id=classes[i],
            confidence=confidence[i],
            probabilities=probabilities[i],
        )
        rows.append(row)
    return rows
