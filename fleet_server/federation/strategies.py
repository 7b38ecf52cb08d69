"""A run spec's strategy as a stock Flower strategy object (nothing re-implemented).

The server optimisers' default steps (``SERVER_LR``) are the ones the federated
benchmark measured best on harshly non-IID digits (bench/bench_federated.py;
docs/federated.md says how they were chosen); a run may set ``server_lr``.
"""

from __future__ import annotations

from typing import Any

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
    return strategy
