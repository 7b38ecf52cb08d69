"""Shadow runs: a candidate model answers the same live inputs as the active one, unseen.

A rollout can ask a device to run the version it is about to receive beside
the one it serves, before anything switches.  The local app only ever gets the
active model's answer: :meth:`ShadowRunner.offer` is called after that answer
exists, copies the rows into a bounded queue and returns at once; a single
worker thread runs the candidate on them and counts how often the two agree,
how long the candidate takes, and, when ground truth comes back, how often each
was right (and on how many of those exactly one of them was, which is what a paired
test of the two accuracies needs).  Both inference entry points feed it: rows from
``predict`` and the named inputs of ``infer`` (classifiers: the answers it compares are
classes; a stateful model's sessions are not shadowed).  When the queue is full the
input is dropped and counted, so a slow candidate costs coverage, never the app's latency.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet_contract.messages import ShadowStats

from .fields import carried_over
from .metrics import _latency
from .runtime import Model

DEFAULT_QUEUE = 256
"""Batches waiting for the candidate at most; beyond that inputs are dropped (counted)."""
MAX_REMEMBERED = 10_000
"""Candidate answers kept by prediction id for labels arriving later (oldest forgotten)."""
MAX_LATENCIES = 10_000
"""Candidate latencies kept per window for the percentiles (the mean and max see all)."""


@dataclass
class _Window:
    samples: int = 0
    agreed: int = 0
    dropped: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    latency_sum: float = 0.0
    latency_max: float = 0.0
    labelled: int = 0
    active_correct: int = 0
    candidate_correct: int = 0
    discordant: int = 0


@dataclass(frozen=True)
class _Job:
    rows: npt.NDArray[np.float32] | None
    active: tuple[int, ...]
    ids: tuple[str, ...]
    inputs: Any = None
    """For :meth:`ShadowRunner.offer_inputs`: the named inputs of a ``/v1/infer`` call."""


class ShadowRunner:
    """Runs ``candidate`` on inputs the active model already answered; thread-safe."""

    def __init__(
        self,
        candidate: Model,
        *,
        capacity: int = DEFAULT_QUEUE,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not 1 <= capacity <= 100_000:
            raise ValueError(f"shadow queue capacity must be from 1 to 100000, got {capacity}")
        self.candidate = candidate
        self._clock = clock
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=capacity)
        self._lock = threading.Lock()
        self._window = _Window()
        self._answers: OrderedDict[str, int] = OrderedDict()
        self._thread: threading.Thread | None = None

    @property
    def label(self) -> str:
        m = self.candidate.manifest
        return f"{m.name}@{m.version}"

    def start(self) -> ShadowRunner:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="shadow", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Finish what is queued, then end the worker."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def idle(self) -> None:
        """Block until every queued input has been run (tests and shutdown use it)."""
        self._queue.join()

    # ------------------------------------------------------------- intake --

    def offer(
        self, rows: npt.NDArray[np.float32], active: Sequence[int], ids: Sequence[str] = ()
    ) -> bool:
        """Queue ``rows`` the active model answered with classes ``active``; never blocks.

        Returns False (and counts the rows dropped) when the queue is full.
        """
        return self._enqueue(
            _Job(np.array(rows, dtype=np.float32, copy=True), tuple(active), tuple(ids))
        )

    def offer_inputs(self, inputs: Any, active: Sequence[int], ids: Sequence[str] = ()) -> bool:
        """Like :meth:`offer`, for the inputs of :meth:`~agent.serving.ModelService.infer`
        (named arrays or one array) whose classes the active model answered ``active``."""
        return self._enqueue(_Job(None, tuple(active), tuple(ids), inputs=_copied(inputs)))

    def _enqueue(self, job: _Job) -> bool:
        """Queue ``job`` if there is room; otherwise count its rows dropped and return False."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            with self._lock:
                self._window.dropped += len(job.active)
            return False
        return True

    def label_arrived(self, prediction_id: str, label: int, active_correct: bool) -> None:
        """Ground truth for a prediction both models answered (others are ignored)."""
        with self._lock:
            candidate = self._answers.pop(prediction_id, None)
            if candidate is None:
                return
            w = self._window
            w.labelled += 1
            w.active_correct += int(active_correct)
            w.candidate_correct += int(candidate == label)
            w.discordant += int((candidate == label) != active_correct)

    # ------------------------------------------------------------- worker --

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._run(job)
            finally:
                self._queue.task_done()

    def _run(self, job: _Job) -> None:
        start = self._clock()
        try:
            classes = self._classes(job)
        except Exception:  # a candidate failing must never reach the active path
            with self._lock:
                self._window.errors += len(job.active)
            return
        per_row = (self._clock() - start) / max(len(job.active), 1)
        with self._lock:
            w = self._window
            for i, (mine, theirs) in enumerate(zip(classes, job.active, strict=True)):
                w.samples += 1
                w.agreed += int(mine == theirs)
                w.latency_sum += per_row
                w.latency_max = max(w.latency_max, per_row)
                if len(w.latencies) < MAX_LATENCIES:
                    w.latencies.append(per_row)
                if i < len(job.ids):
                    self._remember(job.ids[i], int(mine))

    def _classes(self, job: _Job) -> list[int]:
        if job.rows is not None:
            prediction, _ = self.candidate.predict_rows(job.rows)
            return list(prediction.classes.tolist())
        result = self.candidate.infer(job.inputs)
        if result.classes is None or len(result.classes) != len(job.active):
            raise ValueError("the candidate gives no class per answer for these inputs")
        return result.classes

    def _remember(self, prediction_id: str, predicted: int) -> None:
        self._answers[prediction_id] = predicted
        while len(self._answers) > MAX_REMEMBERED:
            self._answers.popitem(last=False)

    # ---------------------------------------------------------- telemetry --

    def snapshot(self) -> ShadowStats:
        """The window since the last snapshot, as telemetry sends it."""
        with self._lock:
            w, self._window = self._window, _Window()
        m = self.candidate.manifest
        latency = None
        if w.samples:
            latency = _latency(
                np.asarray(w.latencies, dtype=np.float64), w.latency_sum / w.samples, w.latency_max
            )
        return carried_over(ShadowStats, w, model=m.name, version=m.version, latency=latency)


def _copied(inputs: Any) -> Any:
    """The caller may reuse its buffers once its answer is back: the queue keeps copies."""
    if isinstance(inputs, Mapping):
        return {k: np.array(v, copy=True) for k, v in inputs.items()}
    return np.array(inputs, copy=True)
