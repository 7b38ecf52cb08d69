"""Buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022) as a Flower strategy.

Synchronous rounds run at the pace of the slowest sampled device.  Here every
device trains on whatever global version it was last sent; the server keeps
up to ``concurrency`` devices busy, buffers their updates as they arrive and
steps the global model every ``buffer_size`` updates:

    w <- w + server_lr * sum_i n_i s(tau_i) (w_i - w_base_i) / sum_i n_i,
    s(tau) = (1 + tau) ** -staleness_exponent

where ``tau_i`` is how many versions the global model moved on since device i
was sent its copy.  An update more than ``max_staleness`` versions old is
dropped and counted.  The class is a Flower ``Strategy``: ``configure_train``
addresses the idle devices, ``aggregate_train`` buffers replies and returns new
arrays only when the buffer is full; :meth:`FedBuff.start` replaces Flower's
round loop with one that pushes and pulls messages on the abstract ``Grid``.
A "round" of an asynchronous run is one aggregation (one new global version).

Everything the server must remember between aggregations (version, weights,
the copies still in flight, the buffer) is in :meth:`get_state` /
:meth:`set_state` as plain arrays, so a checkpoint can hold it.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from logging import getLogger

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from edgefleet_contract.errors import FederationError

log = getLogger(__name__)

Weights = dict[str, npt.NDArray[np.float32]]
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


@dataclass
class Buffered:
    node: int
    base: int
    delta: dict[str, npt.NDArray[np.float64]]
    examples: float
    staleness: int


@dataclass
class Aggregation:
    """What the latest aggregation used (for the round's numbers)."""

    version: int = 0
    nodes: list[int] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)


class FedBuff(Strategy):
    def __init__(
        self,
        *,
        buffer_size: int = 5,
        max_staleness: int = 30,
        concurrency: int | None = None,
        server_lr: float = 1.0,
        staleness_exponent: float = 0.5,
        min_available_nodes: int = 1,
        seed: int | None = None,
    ) -> None:
        if buffer_size < 1 or max_staleness < 0:
            raise FederationError("fedbuff needs buffer_size >= 1 and max_staleness >= 0")
        self.buffer_size = buffer_size
        self.max_staleness = max_staleness
        self.concurrency = concurrency
        self.server_lr = server_lr
        self.staleness_exponent = staleness_exponent
        self.min_available_nodes = min_available_nodes
        self._rng = random.Random(seed)
        self.version = 0
        self.weights: Weights = {}
        self._sent: dict[int, Weights] = {}
        """The global weights of every version a device may still answer for."""
        self.inflight: dict[int, int] = {}
        """node id -> the version it is training on."""
        self.buffer: list[Buffered] = []
        self.dropped: Counter[str] = Counter()
        self.last = Aggregation()

    # ------------------------------------------------------------- core --

    def reset(self, weights: Mapping[str, npt.NDArray[np.floating]]) -> None:
        self.version = 0
        self.weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
        self._sent = {0: self.weights}
        self.inflight.clear()
        self.buffer.clear()

    def staleness_weight(self, staleness: int) -> float:
        return float((1.0 + staleness) ** -self.staleness_exponent)

    def add(
        self, node: int, weights: Mapping[str, npt.NDArray[np.floating]], examples: float
    ) -> bool:
        """Buffer one device's update; True when it completed the buffer (a new version)."""
        base = self.inflight.pop(node, None)
        if base is None:
            self.dropped["unexpected"] += 1
            return False
        staleness = self.version - base
        if staleness > self.max_staleness or base not in self._sent:
            self.dropped["stale"] += 1
            return False
        start = self._sent[base]
        if set(weights) != set(start):
            self.dropped["wrong_arrays"] += 1
            return False
        delta = {k: np.asarray(weights[k], np.float64) - start[k] for k in start}
        self.buffer.append(Buffered(node, base, delta, max(float(examples), 0.0), staleness))
        if len(self.buffer) < self.buffer_size:
            return False
        self._aggregate()
        return True

    def _aggregate(self) -> None:
        total = sum(b.examples for b in self.buffer) or float(len(self.buffer))
        step = {k: np.zeros_like(v, dtype=np.float64) for k, v in self.weights.items()}
        for b in self.buffer:
            share = (b.examples or 1.0) * self.staleness_weight(b.staleness) / total
            for k in step:
                step[k] += share * b.delta[k]
        self.weights = {
            k: (v + self.server_lr * step[k]).astype(np.float32) for k, v in self.weights.items()
        }
        self.version += 1
        self.last = Aggregation(
            self.version, [b.node for b in self.buffer], [b.staleness for b in self.buffer]
        )
        self.buffer.clear()
        self._sent[self.version] = self.weights
        keep = set(self.inflight.values()) | {self.version}
        self._sent = {v: w for v, w in self._sent.items() if v in keep}

    def forget(self, node: int) -> None:
        """The device will not answer (error reply, timeout): it is idle again."""
        self.inflight.pop(node, None)

    # ------------------------------------------------------------ state --

    def get_state(self) -> dict[str, npt.NDArray[np.generic]]:
        """Everything needed to continue after a restart, as named arrays (npz-friendly)."""
        state: dict[str, npt.NDArray[np.generic]] = {
            "version": np.asarray(self.version, np.int64),
            "inflight": np.asarray(sorted(self.inflight.items()), np.int64).reshape(-1, 2),
            "buffer": np.asarray(
                [(b.node, b.base, b.staleness) for b in self.buffer], np.int64
            ).reshape(-1, 3),
            "examples": np.asarray([b.examples for b in self.buffer], np.float64),
        }
        for version, weights in self._sent.items():
            for k, v in weights.items():
                state[f"sent/{version}/{k}"] = v
        for i, b in enumerate(self.buffer):
            for k, d in b.delta.items():
                state[f"delta/{i}/{k}"] = d
        return state

    def set_state(self, state: Mapping[str, npt.NDArray[np.generic]]) -> None:
        self.version = int(state["version"])
        self.inflight = {int(n): int(v) for n, v in np.asarray(state["inflight"]).reshape(-1, 2)}
        self._sent = {}
        for key, value in state.items():
            if key.startswith("sent/"):
                _, version, name = key.split("/", 2)
                self._sent.setdefault(int(version), {})[name] = np.asarray(value, np.float32)
        self.weights = self._sent[self.version]
        self.buffer = []
        meta = np.asarray(state["buffer"], np.int64).reshape(-1, 3)
        examples = np.asarray(state["examples"], np.float64)
        for i, ((node, base, staleness), n) in enumerate(zip(meta, examples, strict=True)):
            prefix = f"delta/{i}/"
            delta = {
                k[len(prefix) :]: np.asarray(v, np.float64)
                for k, v in state.items()
                if k.startswith(prefix)
            }
            self.buffer.append(Buffered(int(node), int(base), delta, float(n), int(staleness)))

    def edgefleet_state(self) -> tuple[dict[str, object], dict[str, npt.NDArray[np.generic]]]:
        """The checkpoint hook's shape (metadata, arrays): everything is in the arrays."""
        return {"fedbuff": 1}, self.get_state()

    def edgefleet_restore(
        self, meta: Mapping[str, object], arrays: Mapping[str, npt.NDArray[np.generic]]
    ) -> None:
        self.set_state(arrays)

    # --------------------------------------------- Flower strategy calls --

    def summary(self) -> None:
        log.info(
            "FedBuff: buffer %d, max staleness %d, concurrency %s, server lr %g",
            self.buffer_size,
            self.max_staleness,
            self.concurrency,
            self.server_lr,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Instructions for idle devices, up to ``concurrency`` busy in all."""
        nodes = list(grid.get_node_ids())
        if len(nodes) < self.min_available_nodes:
            return []
        idle = [n for n in nodes if n not in self.inflight]
        room = len(idle) if self.concurrency is None else self.concurrency - len(self.inflight)
        chosen = self._rng.sample(idle, max(0, min(len(idle), room)))
        if not chosen:
            return []
        current = ArrayRecord({k: Array(v) for k, v in self.weights.items()})
        messages = []
        for node in chosen:
            self.inflight[node] = self.version
            cfg = ConfigRecord(dict(config))
            cfg["server-round"] = self.version
            record = RecordDict({"arrays": current, "config": cfg})
            messages.append(Message(record, node, "train", group_id=str(self.version)))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Buffer the replies; the new global arrays once ``buffer_size`` updates are in.

        Given more replies than fill the buffer it may step more than once and return only
        the last version; :meth:`start` hands them over one at a time."""
        stepped = False
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error() or "arrays" not in reply.content.array_records:
                self.forget(node)
                self.dropped["error"] += 1
                continue
            arrays = {k: _numpy(v) for k, v in reply.content.array_records["arrays"].items()}
            metrics = reply.content.metric_records.get("metrics")
            examples = float(metrics.get("num-examples", 1)) if metrics else 1.0  # type: ignore[arg-type]
            stepped = self.add(node, arrays, examples) or stepped
        if not stepped:
            return None, None
        record = ArrayRecord({k: Array(v) for k, v in self.weights.items()})
        staleness = self.last.staleness
        return record, MetricRecord(
            {"updates": len(staleness), "staleness-mean": float(np.mean(staleness))}
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None

    # ------------------------------------------------------------- loop --

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 0.02,
        refresh_s: float = 1.0,
    ) -> Result:
        """Aggregate ``num_rounds`` times; a device silent for ``timeout`` s is given up on."""
        if not self.weights:
            self.reset({k: v.numpy() for k, v in initial_arrays.items()})
        # Nothing is in flight in this process yet (after a restore, the devices' answers to
        # the previous process would not be recognised): every device is idle.
        self.inflight.clear()
        first = self.version
        config = train_config or ConfigRecord()
        result = Result()
        waiting: dict[str, tuple[int, float]] = {}
        abandoned: set[str] = set()
        refreshed, changed = -refresh_s, True
        goal = self.version + num_rounds
        while self.version < goal:
            now = clock()
            if changed or now - refreshed >= refresh_s:
                # Idle devices get the current version; this also notices a stopped run.
                messages = list(self.configure_train(self.version + 1, ArrayRecord(), config, grid))
                ids = grid.push_messages(messages)
                for message_id, message in zip(ids, messages, strict=True):
                    waiting[message_id] = (message.metadata.dst_node_id, now)
                refreshed = now
            replies = list(grid.pull_messages([*waiting, *abandoned]))
            fresh = [r for r in replies if r.metadata.reply_to_message_id not in abandoned]
            for reply in replies:
                abandoned.discard(reply.metadata.reply_to_message_id)
                waiting.pop(reply.metadata.reply_to_message_id, None)
            for reply in fresh:  # one at a time: every version is evaluated and booked
                if self.version < goal:
                    self._step(self.version + 1 - first, [reply], evaluate_fn, result)
            expired = [k for k, (_, sent_at) in waiting.items() if clock() - sent_at > timeout]
            for key in expired:
                self.forget(waiting.pop(key)[0])
                abandoned.add(key)
                self.dropped["timeout"] += 1
            changed = bool(fresh or expired)
            if not replies:
                time.sleep(poll_s)
        return result

    def _step(
        self,
        run_round: int,
        replies: list[Message],
        evaluate_fn: EvaluateFn | None,
        result: Result,
    ) -> None:
        """Buffer ``replies``; on a new version, evaluate it as round ``run_round`` of this
        ``start`` call (what Flower's loop passes to ``evaluate_fn``)."""
        arrays, metrics = self.aggregate_train(self.version + 1, replies)
        if arrays is None:
            return
        result.arrays = arrays
        if metrics is not None:
            result.train_metrics_clientapp[run_round] = metrics
        if evaluate_fn is not None:
            res = evaluate_fn(run_round, arrays)
            if res is not None:
                result.evaluate_metrics_serverapp[run_round] = res


def _numpy(array: Array, tries: int = 3) -> npt.NDArray[np.floating]:
    """``array.numpy()``, tried again on CPython 3.11's spurious ``SystemError`` from ``ast``
    (python/cpython#106905): numpy parses each array's header with ``ast.literal_eval``, and
    this thread decodes while the ingest thread decodes the next reply for validation."""
    for attempt in range(tries):
        try:
            return array.numpy()
        except SystemError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")
