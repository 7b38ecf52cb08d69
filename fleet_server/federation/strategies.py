"""A run spec's strategy as a stock Flower strategy object (nothing re-implemented).

The server optimisers' default steps (``SERVER_LR``) are the ones the federated
benchmark measured best on harshly non-IID digits (bench/bench_federated.py;
docs/federated.md says how they were chosen); a run may set ``server_lr``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from .fedbuff import FedBuff
from .spec import RunSpec

SERVER_LR = {"fedadam": 0.3, "fedyogi": 0.3, "fedadagrad": 0.1, "fedavgm": 1.0}
"""The server step each server-optimiser strategy uses when a run does not set one."""


def server_lr(spec: RunSpec) -> float:
    """The run's server step: its own ``server_lr`` or the strategy's default."""
    if spec.server_lr is not None:
        return spec.server_lr
    return SERVER_LR.get(spec.strategy, 1.0)


def make_strategy(spec: RunSpec) -> Strategy:
    """Flower's strategy for ``spec`` (over-selection samples ``1 + over_select`` times the
    run's fraction; :mod:`.deadline` closes the round once enough updates are in)."""
    common: dict[str, Any] = {
        "fraction_train": min(1.0, spec.fraction * (1.0 + spec.over_select)),
        "fraction_evaluate": spec.fraction if spec.client_evaluate else 0.0,
        "min_train_nodes": spec.min_clients,
        "min_evaluate_nodes": spec.min_clients,
        "min_available_nodes": spec.min_clients,
    }
    eta = server_lr(spec)
    strategy: Strategy
    if spec.strategy == "fedprox":
        strategy = FedProx(**common, proximal_mu=spec.local.proximal_mu or 0.01)
    elif spec.strategy == "fedadam":
        strategy = FedAdam(**common, eta=eta, eta_l=spec.local.lr, tau=spec.tau)
    elif spec.strategy == "fedyogi":
        strategy = FedYogi(**common, eta=eta, eta_l=spec.local.lr, tau=spec.tau)
    elif spec.strategy == "fedadagrad":
        strategy = FedAdagrad(**common, eta=eta, eta_l=spec.local.lr, tau=spec.tau)
    elif spec.strategy == "fedavgm":
        strategy = FedAvgM(**common, server_learning_rate=eta, server_momentum=spec.server_momentum)
    elif spec.strategy == "fedbuff":
        strategy = FedBuff(
            buffer_size=spec.buffer_size,
            max_staleness=spec.max_staleness,
            concurrency=spec.concurrency,
            server_lr=eta,
            staleness_exponent=spec.staleness_exponent,
            min_available_nodes=spec.min_clients,
        )
    elif spec.strategy == "krum":
        strategy = Krum(**common, num_malicious_nodes=spec.krum_malicious)
    elif spec.strategy == "trimmed-mean":
        strategy = FedTrimmedAvg(**common, beta=spec.trim_beta)
    else:
        strategy = FedAvg(**common)
    if spec.privacy.central_dp:
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy,
            noise_multiplier=spec.privacy.noise_multiplier,
            clipping_norm=spec.privacy.clipping_norm,
            num_sampled_clients=spec.min_clients,
        )
    if spec.strategy in SERVER_LR and spec.strategy != "fedavgm":
        strategy = Float32(strategy)
    return strategy


class Wrapped(Strategy):
    """A strategy that hands every step to ``strategy`` (subclasses change one step)."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


class Float32(Wrapped):
    """Flower's adaptive optimisers compute the new global weights in float64, which would
    double every instruction on the wire; the model is float32, so this wrapper hands the
    next round float32 arrays (the optimiser keeps its float64 moments)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is not None:
            arrays = ArrayRecord(
                {k: Array(np.asarray(v.numpy(), np.float32)) for k, v in arrays.items()}
            )
        return arrays, metrics
