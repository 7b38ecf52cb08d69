"""The robust strategies and central DP, proved on the aggregate they produce.

Each strategy is the one :func:`make_strategy` builds for a run spec (stock Flower, with
whatever wrapper the run gets), handed one round of replies directly: honest devices whose
updates sit near a known mean, and a poisoned one far away. A strategy that fell back to
FedAvg, or a run whose central DP was dropped, lands visibly elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from edgefleet_common import flower_compat
from fleet_server.federation.spec import RunSpec
from fleet_server.federation.strategies import make_strategy

from .fl_helpers import Nodes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIZE = 400
HONEST = 1.0
POISON = 1000.0


def aggregate(spec: RunSpec, updates: list[np.ndarray], start: np.ndarray) -> np.ndarray:
    """One round of ``spec``'s strategy: device i answers with ``start + updates[i]``."""
    flower_compat.set_task_identity(3)
    strategy: Strategy = make_strategy(spec)
    nodes = list(range(1, len(updates) + 1))
    sent = list(
        strategy.configure_train(1, ArrayRecord({"w": Array(start)}), ConfigRecord(), Nodes(nodes))
    )
    assert len(sent) == len(updates)
    replies = []
    for message in sent:
        flower_compat.assign_message_id(message)
        update = updates[message.metadata.dst_node_id - 1]
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(start + update)}),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )
        replies.append(Message(content, reply_to=message))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return np.asarray(arrays["w"].numpy(), np.float64)


def honest_and_poisoned(honest: int = 4) -> tuple[list[np.ndarray], np.ndarray]:
    """``honest`` updates scattered around HONEST, then one at POISON; and their mean."""
    rng = np.random.default_rng(11)
    good = [
        np.float32(HONEST) + rng.normal(0, 0.05, SIZE).astype(np.float32) for _ in range(honest)
    ]
    bad = np.full(SIZE, POISON, np.float32)
    return [*good, bad], np.mean(good, axis=0)


def spec(**options: object) -> RunSpec:
    return RunSpec.model_validate({"model": "digits", "rounds": 1, "min_clients": 5} | options)


@pytest.mark.parametrize(
    "options",
    [{"strategy": "krum", "krum_malicious": 1}, {"strategy": "trimmed-mean", "trim_beta": 0.2}],
    ids=["krum", "trimmed-mean"],
)
def test_robust_strategy_ignores_a_poisoned_update(options: dict[str, object]) -> None:
    start = np.zeros(SIZE, np.float32)
    updates, honest_mean = honest_and_poisoned()
    robust = aggregate(spec(**options), updates, start)
    # Krum keeps one honest update, the trimmed mean averages the middle three: both within
    # the honest devices' scatter (0.05) of their mean, nowhere near the poisoned value.
    assert float(np.abs(robust - honest_mean).max()) < 0.3
    # Positive control: FedAvg over the same replies is dragged by the poisoned device.
    plain = aggregate(spec(strategy="fedavg"), updates, start)
    assert np.allclose(plain, np.mean(updates, axis=0), atol=1e-3)
    assert float(np.abs(plain - honest_mean).min()) > 100.0


def test_central_dp_clips_every_update() -> None:
    """With no noise, the aggregate step is the mean of the updates clipped to the norm."""
    start = np.full(SIZE, 0.5, np.float32)
    updates = [np.full(SIZE, 1.0 + i, np.float32) for i in range(5)]  # norms 20..100
    dp = {"central_dp": True, "noise_multiplier": 0.0, "clipping_norm": 2.0}
    step = aggregate(spec(strategy="fedavg", privacy=dp), updates, start) - start
    clipped = np.mean([u * (2.0 / np.linalg.norm(u)) for u in updates], axis=0)
    assert np.allclose(step, clipped, atol=1e-5)
    assert np.linalg.norm(step) == pytest.approx(2.0, rel=1e-4)
    plain = aggregate(spec(strategy="fedavg"), updates, start) - start
    assert np.linalg.norm(plain) > 50.0  # positive control: unclipped, the mean is 3.0 each


def test_central_dp_adds_gaussian_noise_of_the_documented_scale() -> None:
    """Identical updates inside the clipping norm: what remains around them is the noise,
    whose standard deviation is noise_multiplier x clipping_norm / sampled clients."""
    start = np.zeros(SIZE * 10, np.float32)
    updates = [np.full(SIZE * 10, 0.001, np.float32) for _ in range(5)]
    dp = {"central_dp": True, "noise_multiplier": 1.0, "clipping_norm": 1.0}
    noise = aggregate(spec(strategy="fedavg", privacy=dp), updates, start) - 0.001
    assert float(np.std(noise)) == pytest.approx(1.0 * 1.0 / 5, rel=0.1)
    assert abs(float(np.mean(noise))) < 0.02
    quiet = aggregate(spec(strategy="fedavg"), updates, start)
    assert np.allclose(quiet, 0.001, atol=1e-6)
