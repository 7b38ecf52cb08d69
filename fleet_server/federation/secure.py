"""Rounds with secure aggregation (Flower's SecAgg+ workflow) over the same grid.

Flower 1.41 offers SecAgg+ only through its compatibility layer (legacy
strategy + ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))``), so a
secure run uses that, still in-process over :class:`.grid.MqttGrid`.  What the
grid receives from a device in the "collect masked vectors" stage is masked;
only the sum over at least ``reconstruction_threshold`` devices is ever
unmasked.  Per-update validation is therefore impossible by design: SecAgg+
clips every value to ``clipping_range`` before quantising, which bounds what a
hostile device can add.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, RecordDict
from flwr.common import NDArrays, Scalar, ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as CompatFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

from edgefleet_contract.package import Preprocessing, Trainable

from .app import RoundHook, Weights, train_config
from .spec import RunSpec


def run_secure_rounds(
    grid: Grid,
    spec: RunSpec,
    initial: Weights,
    *,
    trainable: Trainable,
    preprocessing: Preprocessing,
    first_round: int = 1,
    on_round: RoundHook | None = None,
) -> Weights:
    remaining = spec.rounds - first_round + 1
    names = [p.name for p in trainable.params]
    final: dict[str, Weights] = {"w": dict(initial)}
    if remaining <= 0:
        return final["w"]
    config = dict(train_config(spec, trainable, preprocessing))

    def fit_config(server_round: int) -> dict[str, Scalar]:
        return {**config, "server-round": first_round + server_round - 1}  # type: ignore[dict-item]

    def evaluate_fn(
        server_round: int, parameters: NDArrays, _config: dict[str, Scalar]
    ) -> tuple[float, dict[str, Scalar]] | None:
        if server_round == 0:
            return None
        weights = {n: np.asarray(p, np.float32) for n, p in zip(names, parameters, strict=True)}
        final["w"] = weights
        if on_round is None:
            return None
        metrics = on_round(first_round + server_round - 1, weights)
        return float(metrics.get("loss", 0.0)), dict(metrics)

    strategy = CompatFedAvg(
        fraction_fit=spec.fraction,
        fraction_evaluate=0.0,
        min_fit_clients=spec.min_clients,
        min_available_clients=spec.min_clients,
        initial_parameters=ndarrays_to_parameters([initial[n] for n in names]),
        on_fit_config_fn=fit_config,
        evaluate_fn=evaluate_fn,
    )
    context = LegacyContext(
        Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=remaining, round_timeout=spec.round_timeout_s),
        strategy=strategy,
    )
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=spec.secagg_shares,
            reconstruction_threshold=spec.secagg_threshold,
            timeout=spec.round_timeout_s,
        )
    )
    workflow(grid, context)
    return final["w"]
