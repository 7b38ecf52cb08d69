"""Federated runs on the fleet server: start, stop, checkpoint, resume, hand over.

One run trains at a time (its grid owns the ``fl/*`` traffic).  Each run is a
thread calling :func:`.app.run_rounds` with an :class:`.grid.MqttGrid`; after
every aggregation the round's numbers and the new global weights are committed
together, so :meth:`TrainingService.resume` (called when the server starts)
continues an interrupted run from its last completed round.  When the last
round is done, :mod:`.candidate` turns the weights into a candidate package.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from flwr.serverapp.strategy import Strategy

from edgefleet_common import flower_compat
from edgefleet_contract.codec import DEFAULT_MAX_PAYLOAD
from edgefleet_contract.errors import FederationError, NotFound, RunStopped, SelectorError
from edgefleet_contract.package import ModelPackage, decode_weights, encode_weights
from edgefleet_contract.scoring import loss_and_accuracy

from .. import selector
from ..modelkit.network import Network
from ..store.base import DeviceStore, TelemetryStore, TrainingRecords
from ..store.training import RoundRecord, TrainingRun
from . import strategy_state
from .app import Weights, evaluate_parent, run_rounds
from .candidate import CandidateHook, HeldOut, finish_run, heldout_rows
from .deadline import round_close
from .eligibility import census
from .fedeval import UNTAGGED, summarise, verdict
from .grid import Exchange, MqttGrid, Sender
from .secure import run_secure_rounds
from .spec import RunSpec
from .strategies import make_strategy
from .validate import UpdateCheck

log = logging.getLogger(__name__)

UNFINISHED = ("pending", "running")
"""Training-run statuses the service still drives (a finished run is left alone)."""


class TrainingStore(DeviceStore, TelemetryStore, TrainingRecords, Protocol):
    """What the training service uses: devices (eligibility), their telemetry, runs."""


PackageSource = Callable[[str, str | None], ModelPackage]
"""The (float) package of a model by name and version (None: its newest trainable one)."""


class TrainingService:
    def __init__(
        self,
        store: TrainingStore,
        send: Sender,
        *,
        packages: PackageSource,
        heldout: HeldOut,
        candidates_dir: Path,
        on_candidate: CandidateHook | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        build_candidates: bool = True,
        shared: bool = False,
    ) -> None:
        self.store = store
        self._send = send
        self._packages = packages
        self._heldout = heldout
        self.candidates_dir = candidates_dir
        self.on_candidate = on_candidate
        self.max_payload = max_payload
        self.build_candidates = build_candidates
        self._lock = threading.Lock()
        self._grid: MqttGrid | None = None
        self._run_id: str | None = None
        self._thread: threading.Thread | None = None
        self.rejected_total: Counter[str] = Counter()
        self._census: Counter[str] = Counter()
        """The latest eligibility census of the running run (``eligible`` + left out per reason)."""
        self.shared = shared
        """Several fleet-server processes share the store: runs go only where the
        training lease is held (:meth:`host`); elsewhere ``start_run`` just stores them."""
        self._hosting = False

    # ----------------------------------------------------------- operator --

    def start_run(self, spec: RunSpec, *, actor: str) -> TrainingRun:
        try:
            selector.parse(spec.target)
        except SelectorError as exc:
            raise FederationError(f"bad --target selector: {exc}") from exc
        package = self._packages(spec.model, spec.parent_version)
        spec = spec.model_copy(update={"parent_version": package.manifest.version})
        trainable = package.manifest.trainable
        if trainable is None:
            raise FederationError(f"model {spec.model} has no trainable weights")
        if trainable.embedding is not None and (spec.secagg or spec.privacy.local_dp_epsilon > 0):
            raise FederationError(
                f"model {spec.model} trains a head over its backbone, which devices do on the "
                "plain path only: run it without secagg and local DP"
            )
        with self._lock:
            going = self._going()
            if going is not None:
                raise FederationError(
                    f"training run {going} is still going; stop it or wait for it"
                )
            run_id = uuid.uuid4().hex[:12]
            self.store.create_training_run(
                run_id, spec.model_dump(mode="json"), actor=actor, now=time.time()
            )
            if self._hosting or not self.shared:
                self._launch(run_id, spec)
        return self.store.get_training_run(run_id)

    def _going(self) -> str | None:
        """The run that is going (here, or in a shared store: anywhere), if any."""
        if self._thread is not None and self._thread.is_alive():
            return self._run_id
        if self.shared:
            for status in sorted(UNFINISHED):
                runs = self.store.list_training_runs(status=status, limit=1)
                if runs:
                    return runs[0].id
        return None

    # ------------------------------------------------------ shared store --

    def host(self) -> None:
        """This process took the training lease: resume what is running (from checkpoints)."""
        with self._lock:
            self._hosting = True
        self.resume()

    def unhost(self) -> None:
        """The lease is gone: interrupt the run here, leaving it for the next holder."""
        self.shutdown()
        with self._lock:
            self._hosting = False

    def adopt(self) -> None:
        """The holder's periodic look at the store: start runs another replica created,
        and end the local run when another replica stopped it."""
        if not self._hosting:
            return
        with self._lock:
            run_id, grid = self._run_id, self._grid
            alive = self._thread is not None and self._thread.is_alive()
        if alive and run_id is not None:
            if self.store.get_training_run(run_id).status not in UNFINISHED and grid is not None:
                grid.stop()
            return
        self.resume()

    def stop_run(self, run_id: str) -> TrainingRun:
        run = self.store.get_training_run(run_id)
        if run.status not in UNFINISHED:
            raise FederationError(f"training run {run_id} is already {run.status}")
        with self._lock:
            grid = self._grid if self._run_id == run_id else None
            thread = self._thread
        self.store.set_training_status(run_id, "stopped", now=time.time(), detail="stopped")
        if grid is not None:
            grid.stop()
            if thread is not None:
                thread.join(30)
        return self.store.get_training_run(run_id)

    def resume(self) -> list[str]:
        """Restart the runs a previous server process left running (oldest first)."""
        resumed: list[str] = []
        for run in reversed(self.store.list_training_runs(limit=1000)):
            if run.status not in UNFINISHED:
                continue
            with self._lock:
                if self._thread is not None and self._thread.is_alive():
                    self.store.set_training_status(
                        run.id, "failed", now=time.time(), detail="another run was resumed first"
                    )
                    continue
                self._launch(run.id, RunSpec.model_validate(run.spec))
            resumed.append(run.id)
        return resumed

    def shutdown(self) -> None:
        """Server stop: interrupt the run but leave it 'running' so the next start resumes it."""
        with self._lock:
            grid, thread = self._grid, self._thread
            self._run_id = None
        if grid is not None:
            grid.stop()
        if thread is not None:
            thread.join(30)

    # ------------------------------------------------------------ network --

    def deliver(self, device_id: str, frame: bytes) -> None:
        grid = self._grid
        if grid is not None:
            grid.deliver(device_id, frame)

    def device_changed(self, device_id: str) -> None:
        """Presence or state changed; a device now offline owes no replies any more."""
        grid = self._grid
        if grid is None:
            return
        try:
            online = self.store.get_device(device_id).online
        except NotFound:
            online = False
        if not online:
            grid.device_offline(device_id)

    @property
    def grid(self) -> MqttGrid | None:
        return self._grid

    # ----------------------------------------------------------------- run --

    def _launch(self, run_id: str, spec: RunSpec) -> None:
        grid = MqttGrid(
            self._send,
            eligible=self._eligible_fn(spec),
            max_payload=self.max_payload,
            validator=UpdateCheck(max_update_norm=spec.max_update_norm),
            close=round_close(spec),
        )
        self._grid, self._run_id = grid, run_id
        self._thread = threading.Thread(
            target=self._run, args=(run_id, spec, grid), name=f"fl-{run_id}", daemon=True
        )
        self._thread.start()

    def _eligible_fn(self, spec: RunSpec) -> Callable[[], list[str]]:
        chosen = selector.parse(spec.target)
        short_since: list[float] = []

        def fn() -> list[str]:
            devices = self.store.all_devices(where=chosen)  # filtered in SQL
            ids, counts = census(
                devices, self.store.learning_facts, chosen, spec.eligibility, spec.model
            )
            self._census = counts
            if len(ids) >= spec.min_clients:
                short_since.clear()
            elif not short_since:
                short_since.append(time.monotonic())
            elif time.monotonic() - short_since[0] > spec.quorum_wait_s:
                raise FederationError(
                    f"only {len(ids)} eligible devices for {spec.quorum_wait_s:.0f}s; "
                    f"the run needs {spec.min_clients}"
                )
            return ids

        return fn

    def _run(self, run_id: str, spec: RunSpec, grid: MqttGrid) -> None:
        try:
            package = self._packages(spec.model, spec.parent_version)
            trainable = package.manifest.trainable
            assert trainable is not None
            network = Network.from_package(package)
            start, weights = 1, package.weights()
            strategy, dp_releases = make_strategy(spec), 0
            checkpoint = self.store.latest_checkpoint(run_id)
            if checkpoint is not None:
                done, blob = checkpoint
                start, weights = done + 1, decode_weights(blob, trainable)
                saved = strategy_state.restore(strategy, self.store.latest_strategy_state(run_id))
                dp_releases = int(saved.get("dp_releases", 0))
                log.info("training run %s resumes after round %d", run_id, done)
            self.store.set_training_status(run_id, "running", now=time.time())
            flower_compat.set_task_identity(int(run_id, 16) & 0x7FFFFFFF)
            grid.set_run(flower_compat.empty_run(int(run_id, 16) & 0x7FFFFFFF))
            federated = self._federated_acceptance(spec)
            parent: dict[str, Any] = {}
            if federated and start == 1:
                parent = self._evaluate_parent(spec, grid, package, strategy)
            hook = self._round_hook(run_id, spec, grid, network, strategy, dp_releases, parent)
            options = dict(
                trainable=trainable,
                preprocessing=package.manifest.preprocessing,
                first_round=start,
                on_round=hook,
            )
            if spec.secagg:
                final = run_secure_rounds(grid, spec, weights, **options)  # type: ignore[arg-type]
            else:
                final = run_rounds(grid, spec, weights, strategy=strategy, **options)  # type: ignore[arg-type]
            if self._run_id != run_id:
                return  # server shutting down: resume later
            recorded = self.store.list_rounds(run_id)
            last_evaluation = recorded[-1].evaluation if recorded else {}
            judged = None
            if federated:
                first = recorded[0].evaluation.get("parent", {}) if recorded else {}
                judged = verdict(first, last_evaluation, spec.accept_margin)
            result = finish_run(
                run_id,
                spec,
                package,
                network.with_weights(final),
                self._heldout,
                rounds=recorded,
                out_dir=self.candidates_dir / run_id,
                on_candidate=self.on_candidate,
                build=self.build_candidates,
                federated=judged,
            )
            if last_evaluation:
                result = {**result, "federated_evaluation": last_evaluation}
            self.store.set_training_status(
                run_id, "completed", now=time.time(), detail="", result=result
            )
        except RunStopped:
            log.info("training run %s interrupted", run_id)
        except Exception as exc:
            log.exception("training run %s failed", run_id)
            if self._run_id == run_id:
                self.store.set_training_status(run_id, "failed", now=time.time(), detail=str(exc))
        finally:
            with self._lock:
                if self._grid is grid:
                    self._grid = None

    def _federated_acceptance(self, spec: RunSpec) -> bool:
        """Whether the candidate is judged on the devices' held-out samples (spec, or the
        server holds no labelled evaluation rows for the model)."""
        if spec.accept_by == "server":
            return False
        if spec.accept_by == "auto" and len(self._heldout(spec.model).y):
            return False
        if not spec.client_evaluate:
            raise FederationError(
                f"the server holds no labelled evaluation data for {spec.model}: start the "
                "run with client_evaluate (fleetctl train start --client-evaluate) so the "
                "devices' held-out samples judge the candidate"
            )
        return True

    def _evaluate_parent(
        self, spec: RunSpec, grid: MqttGrid, package: ModelPackage, strategy: Strategy
    ) -> dict[str, Any]:
        """The devices' federated evaluation of the package the run starts from."""
        trainable = package.manifest.trainable
        assert trainable is not None
        evaluate_parent(
            grid,
            spec,
            package.weights(),
            trainable=trainable,
            preprocessing=package.manifest.preprocessing,
            strategy=strategy,
        )
        exchange = grid.exchanges[-1]
        exchange.message_type = "evaluate-parent"  # booked (bytes), not a round's evaluation
        if not exchange.metrics:
            raise FederationError(
                "no device evaluated the parent model, so the candidate could not be judged"
                + failure_summary(exchange)
            )
        return summarise(exchange.metrics, 0, self._cohort_fn(spec))

    def _cohort_fn(self, spec: RunSpec) -> Callable[[str], str] | None:
        """Device -> its value of the run's ``evaluate_by`` tag (None: no cohorts asked)."""
        tag = spec.evaluate_by
        if tag is None:
            return None

        def cohort(device_id: str) -> str:
            try:
                return self.store.get_device(device_id).tags.get(tag, UNTAGGED)
            except NotFound:
                return UNTAGGED

        return cohort

    def _round_hook(
        self,
        run_id: str,
        spec: RunSpec,
        grid: MqttGrid,
        network: Network,
        strategy: Strategy,
        dp_releases: int,
        parent: dict[str, Any],
    ) -> Callable[[int, Weights], Mapping[str, float]]:
        started = [time.monotonic()]
        releases = [dp_releases]
        data = self._heldout(spec.model)
        package = self._packages(spec.model, spec.parent_version)
        x = heldout_rows(package, data.x_raw)
        y = data.y
        cohort_of = self._cohort_fn(spec)

        def hook(round_no: int, weights: Weights) -> Mapping[str, float]:
            train = [e for e in grid.exchanges if e.message_type == "train"]
            exchange = train[-1] if train else Exchange()
            if self._run_id != run_id:
                raise RunStopped("server shutting down")
            record = self._record(run_id, round_no, grid, exchange, started, cohort_of)
            if parent and round_no == 1:
                record = replace(record, evaluation={**record.evaluation, "parent": parent})
            if exchange.replies < spec.min_clients:
                self.store.record_failed_round(record)
                raise FederationError(
                    f"round {round_no}: {exchange.replies} good updates, below the quorum of "
                    f"{spec.min_clients}{failure_summary(exchange)}"
                )
            if len(y):
                loss, accuracy = heldout_scores(network.with_weights(weights), x, y)
                record = replace(record, loss=loss, accuracy=accuracy)
            state = b""
            if not spec.secagg:  # SecAgg+ rounds run Flower's legacy workflow, not ``strategy``
                releases[0] += 1 if spec.privacy.central_dp else 0
                state = strategy_state.save(strategy, extra={"dp_releases": releases[0]})
            self.store.complete_round(record, encode_weights(weights), state)
            scores = {"loss": record.loss, "accuracy": record.accuracy}
            log.info("run %s round %d: held-out %s", run_id, round_no, scores)
            return {k: v for k, v in scores.items() if v is not None}

        return hook

    def _record(
        self,
        run_id: str,
        round_no: int,
        grid: MqttGrid,
        exchange: Exchange,
        started: list[float],
        cohort_of: Callable[[str], str] | None = None,
    ) -> RoundRecord:
        """The round's numbers (scores filled in by the caller); resets the grid's tallies."""
        rejected = Counter(grid.rejected)
        grid.rejected.clear()
        self.rejected_total.update(rejected)
        now = time.monotonic()
        record = RoundRecord(
            run_id=run_id,
            round=round_no,
            loss=None,
            accuracy=None,
            participants=list(exchange.participants),
            failures=dict(exchange.failures),
            rejected=dict(rejected),
            bytes_out=sum(e.bytes_out for e in grid.exchanges),
            bytes_in=sum(e.bytes_in for e in grid.exchanges),
            wall_s=now - started[0],
            ts=time.time(),
            failed=dict(exchange.failed),
            eligibility=dict(self._census),
            evaluation=federated_evaluation(grid.exchanges, round_no, cohort_of),
        )
        grid.exchanges.clear()
        started[0] = now
        return record


def federated_evaluation(
    exchanges: list[Exchange], of_round: int, cohort_of: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """The devices' evaluation of the global model of ``of_round`` on their held-out samples
    (Flower's strategies evaluate right after each round's aggregation, before the
    server-side hook that records the round); empty on a round without one."""
    found = [e for e in exchanges if e.message_type == "evaluate" and e.metrics]
    return summarise(found[-1].metrics, of_round, cohort_of) if found else {}


def failure_summary(exchange: Exchange, limit: int = 5) -> str:
    """``; failures: no_samples 2 (dev-a: no_samples: ..., ...)`` or nothing."""
    if not exchange.failures:
        return ""
    counts = ", ".join(f"{k} {v}" for k, v in sorted(exchange.failures.items()))
    devices = sorted(exchange.failed.items())
    shown = "; ".join(f"{d}: {why[:200]}" for d, why in devices[:limit])
    more = f"; and {len(devices) - limit} more" if len(devices) > limit else ""
    return f"; failures: {counts} ({shown}{more})" if shown else f"; failures: {counts}"


def heldout_scores(
    network: Network, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
) -> tuple[float, float]:
    """Cross-entropy and accuracy of ``network`` on preprocessed held-out rows."""
    return loss_and_accuracy(network.forward(x), y)
