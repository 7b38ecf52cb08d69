"""The buffered asynchronous strategy: every K updates, staleness-weighted, bounded, resumable.

Deterministic: updates are handed to the strategy directly or through a grid
whose devices answer synchronously, and time is a counter."""

from __future__ import annotations

from collections.abc import Iterable
from math import sqrt

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from edgefleet_common import flower_compat
from fleet_server.federation.fedbuff import FedBuff

from .fl_helpers import Nodes


def w(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(2, value, np.float32)}


def dispatch(strategy: FedBuff, nodes: list[int]) -> dict[int, int]:
    """Send the current version to ``nodes``; node -> version it trains on."""
    flower_compat.set_task_identity(3)
    strategy.concurrency = None
    busy = set(strategy.inflight)
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), Nodes(nodes)))
    assert {m.metadata.dst_node_id for m in messages} == set(nodes) - busy
    for m in messages:
        assert m.content.config_records["config"]["server-round"] == strategy.version
    return dict(strategy.inflight)


def test_aggregates_every_k_updates_with_staleness_weights() -> None:
    s = FedBuff(buffer_size=3, max_staleness=5)
    s.reset(w(0.0))
    dispatch(s, [1, 2, 3, 4])
    assert not s.add(1, w(1.0), examples=1)
    assert not s.add(2, w(3.0), examples=1)
    assert s.version == 0 and np.all(s.weights["w"] == 0.0)
    assert s.add(3, w(2.0), examples=2)  # third update: a new version
    # example-weighted mean of the deltas, all fresh: (1 + 3 + 2*2) / 4
    assert s.version == 1 and np.allclose(s.weights["w"], 2.0)
    assert s.last.nodes == [1, 2, 3] and s.last.staleness == [0, 0, 0]

    dispatch(s, [1, 2, 3, 4])  # 4 still trains on version 0
    assert not s.add(4, w(4.0), examples=1)  # delta 4 from version 0, one version stale
    assert not s.add(1, w(3.0), examples=1)  # delta 1 from version 1
    assert s.add(2, w(3.0), examples=1)
    expected = 2.0 + (4.0 / sqrt(2.0) + 1.0 + 1.0) / 3.0
    assert s.version == 2 and np.allclose(s.weights["w"], expected)
    assert s.last.staleness == [1, 0, 0]


def test_too_stale_updates_are_dropped_and_counted() -> None:
    s = FedBuff(buffer_size=1, max_staleness=1)
    s.reset(w(0.0))
    dispatch(s, [1, 2, 3])
    assert s.add(1, w(1.0), examples=1)  # version 1
    dispatch(s, [1])
    assert s.add(1, w(2.0), examples=1)  # version 2; nodes 2 and 3 still hold version 0
    assert not s.add(2, w(100.0), examples=1)
    assert s.dropped["stale"] == 1 and s.version == 2 and np.allclose(s.weights["w"], 2.0)
    assert not s.add(9, w(5.0), examples=1)  # never sent anything
    assert s.dropped["unexpected"] == 1


def test_server_lr_and_zero_exponent() -> None:
    s = FedBuff(buffer_size=2, max_staleness=3, server_lr=0.5, staleness_exponent=0.0)
    s.reset(w(1.0))
    dispatch(s, [1, 2])
    s.add(1, w(3.0), examples=1)
    assert s.add(2, w(5.0), examples=3)
    assert np.allclose(s.weights["w"], 1.0 + 0.5 * (2.0 * 1 + 4.0 * 3) / 4)


def test_state_round_trips_mid_buffer() -> None:
    first = FedBuff(buffer_size=3, max_staleness=4)
    first.reset(w(0.0))
    dispatch(first, [1, 2, 3, 4])
    first.add(1, w(1.0), 1)
    first.add(2, w(2.0), 1)
    first.add(3, w(3.0), 1)
    dispatch(first, [1, 2])
    first.add(1, w(5.0), 2)
    state = first.get_state()
    np.savez(__import__("io").BytesIO(), **state)  # plain arrays: a checkpoint can hold them

    second = FedBuff(buffer_size=3, max_staleness=4)
    second.set_state({k: np.array(v) for k, v in state.items()})
    assert second.version == 1 and second.inflight == first.inflight
    for s in (first, second):
        s.add(4, w(7.0), 1)  # trained on version 0
        assert s.add(2, w(1.0), 1)
    assert np.allclose(first.weights["w"], second.weights["w"])
    assert first.get_state().keys() == second.get_state().keys()


class Devices(Nodes):
    """A grid whose devices answer at once (adding ``node`` to every weight) except the
    silent ones; its clock advances one second per call."""

    def __init__(self, nodes: list[int], silent: set[int]) -> None:
        super().__init__(nodes)
        self.silent = silent
        self.replies: dict[str, Message] = {}
        self.sent: list[int] = []
        self.t = 0.0

    def clock(self) -> float:
        self.t += 1.0
        return self.t

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for m in messages:
            ids.append(flower_compat.assign_message_id(m))
            node = m.metadata.dst_node_id
            self.sent.append(node)
            if node in self.silent:
                continue
            arrays = m.content.array_records["arrays"]
            new = {k: Array(v.numpy() + node) for k, v in arrays.items()}
            content = RecordDict(
                {"arrays": ArrayRecord(new), "metrics": MetricRecord({"num-examples": 1})}
            )
            self.replies[ids[-1]] = Message(content, reply_to=m)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


def test_loop_gives_up_on_a_silent_device_and_keeps_aggregating() -> None:
    flower_compat.set_task_identity(4)
    grid = Devices([1, 2, 3], silent={3})
    s = FedBuff(buffer_size=2, max_staleness=10, concurrency=3, seed=1)
    seen: list[int] = []

    def evaluate(version: int, arrays: ArrayRecord) -> MetricRecord:
        seen.append(version)
        return MetricRecord({"v": version})

    result = s.start(
        grid,
        ArrayRecord({"w": Array(np.zeros(2, np.float32))}),
        num_rounds=6,
        timeout=5,
        train_config=ConfigRecord({"lr": 0.1}),
        evaluate_fn=evaluate,
        clock=grid.clock,
        poll_s=0.0,
    )
    assert seen == [1, 2, 3, 4, 5, 6] and s.version == 6
    # Devices 1 and 2 answer at once (+1, +2 each): every aggregation adds (1 + 2) / 2.
    assert np.allclose(result.arrays["w"].numpy(), 6 * 1.5)
    assert s.dropped["timeout"] >= 1  # device 3 never answered and was given up on
    assert 3 in grid.sent and grid.sent.count(1) >= 6


def test_refuses_nonsense_settings() -> None:
    with pytest.raises(Exception, match="buffer_size"):
        FedBuff(buffer_size=0)


def test_a_restored_strategy_continues_from_its_version() -> None:
    """Restored from a checkpoint (the runner's state hook), the next start() goes on from the
    saved version, numbers its rounds from 1 again and sends every device fresh work."""
    flower_compat.set_task_identity(6)
    start = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    first = FedBuff(buffer_size=2, concurrency=2, seed=2)
    first.start(Devices([1, 2], set()), start, num_rounds=3, timeout=50, poll_s=0.0)
    meta, arrays = first.edgefleet_state()
    assert first.version == 3 and np.allclose(first.weights["w"], 3 * 1.5)

    again = FedBuff(buffer_size=2, concurrency=2, seed=2)
    again.edgefleet_restore(meta, arrays)
    seen: list[int] = []
    grid = Devices([1, 2], set())
    result = again.start(
        grid,
        start,  # ignored: the restored weights are the starting point
        num_rounds=2,
        timeout=50,
        evaluate_fn=lambda r, a: seen.append(r) or None,  # type: ignore[func-returns-value]
        poll_s=0.0,
    )
    assert seen == [1, 2] and again.version == 5
    assert np.allclose(result.arrays["w"].numpy(), 5 * 1.5)
    assert sorted(grid.sent[:2]) == [1, 2]
