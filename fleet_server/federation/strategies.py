"""A run spec's strategy as a stock Flower strategy object (nothing re-implemented)."""

from __future__ import annotations

from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from .spec import RunSpec


def make_strategy(spec: RunSpec) -> Strategy:
    common = {
        "fraction_train": spec.fraction,
        "fraction_evaluate": spec.fraction if spec.client_evaluate else 0.0,
        "min_train_nodes": spec.min_clients,
        "min_evaluate_nodes": spec.min_clients,
        "min_available_nodes": spec.min_clients,
    }
    strategy: Strategy
    if spec.strategy == "fedprox":
        strategy = FedProx(**common, proximal_mu=spec.local.proximal_mu or 0.01)  # type: ignore[arg-type]
    elif spec.strategy == "fedadam":
        strategy = FedAdam(**common, eta=spec.server_lr)  # type: ignore[arg-type]
    elif spec.strategy == "krum":
        strategy = Krum(**common, num_malicious_nodes=spec.krum_malicious)  # type: ignore[arg-type]
    elif spec.strategy == "trimmed-mean":
        strategy = FedTrimmedAvg(**common, beta=spec.trim_beta)  # type: ignore[arg-type]
    else:
        strategy = FedAvg(**common)  # type: ignore[arg-type]
    if spec.privacy.central_dp:
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy,
            noise_multiplier=spec.privacy.noise_multiplier,
            clipping_norm=spec.privacy.clipping_norm,
            num_sampled_clients=spec.min_clients,
        )
    return strategy
