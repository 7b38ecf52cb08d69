"""The federated training loop, in Flower's standard ``ServerApp`` shape.

:func:`run_rounds` is what the fleet server calls with its MQTT grid; the
module-level ``app`` wraps the same function as a stock Flower ``ServerApp``
so a run can also be driven by Flower's own deployment runtime
(``flwr run``; see docs/federated.md).  Either way the strategy is a stock
Flower strategy calling only the abstract ``Grid``.

Rounds are checkpointed through ``on_round`` (Flower's ``evaluate_fn`` hook,
called after every aggregation with the new global arrays): that is where the
server evaluates on its held-out set, checks the quorum, and persists weights,
so a restarted server resumes from the last completed round.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from edgefleet_contract.package import Preprocessing, Trainable, encode_weights, read_package

from .fedbuff import FedBuff
from .grid import Exchange, MqttGrid
from .spec import RunSpec
from .strategies import Wrapped, make_strategy

Weights = dict[str, npt.NDArray[np.float32]]
RoundHook = Callable[[int, Weights], Mapping[str, float]]
HELDOUT_EVERY = 5
"""With federated evaluation, every 5th sample on a device is held out from training."""


def to_record(weights: Mapping[str, npt.NDArray[np.float32]]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in weights.items()})


def from_record(record: ArrayRecord) -> Weights:
    return {k: np.asarray(v.numpy(), np.float32) for k, v in record.items()}


def train_config(spec: RunSpec, trainable: Trainable, preprocessing: Preprocessing) -> ConfigRecord:
    p = spec.privacy
    config: dict[str, int | float | str] = {
        "trainable": trainable.model_dump_json(),
        "preprocessing": preprocessing.model_dump_json(),
        "model": spec.model,
        "local-epochs": spec.local.epochs,
        "lr": spec.local.lr,
        "batch-size": spec.local.batch_size,
        "proximal-mu": spec.local.proximal_mu,
    }
    if spec.client_evaluate:
        config["heldout-every"] = HELDOUT_EVERY
    if p.local_dp_epsilon > 0:
        config.update(
            {
                "local-dp-epsilon": p.local_dp_epsilon,
                "local-dp-clip": p.local_dp_clip,
                "local-dp-sensitivity": p.local_dp_sensitivity,
                "local-dp-delta": p.local_dp_delta,
            }
        )
    return ConfigRecord(config)  # type: ignore[arg-type]


def run_rounds(
    grid: Grid,
    spec: RunSpec,
    initial: Weights,
    *,
    trainable: Trainable,
    preprocessing: Preprocessing,
    first_round: int = 1,
    on_round: RoundHook | None = None,
    strategy: Strategy | None = None,
) -> Weights:
    """Run rounds ``first_round..spec.rounds``; returns the final global weights.

    ``strategy`` (default: the spec's) may come with state restored from a checkpoint."""
    remaining = spec.rounds - first_round + 1
    if remaining <= 0:
        return dict(initial)
    strategy = strategy if strategy is not None else make_strategy(spec)
    config = train_config(spec, trainable, preprocessing)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0 or on_round is None:
            return None
        if isinstance(strategy, FedBuff):
            close_async_round(grid, strategy)
        metrics = on_round(first_round + server_round - 1, from_record(arrays))
        return MetricRecord(dict(metrics))

    looped = strategy if isinstance(strategy, FedBuff) else Scheduled(strategy, spec, first_round)
    result = looped.start(
        grid=grid,
        initial_arrays=to_record(initial),
        num_rounds=remaining,
        timeout=spec.round_timeout_s,
        train_config=config,
        evaluate_config=ConfigRecord(dict(config)),
        evaluate_fn=evaluate_fn,
    )
    return from_record(result.arrays) if len(result.arrays) else dict(initial)


def evaluates(spec: RunSpec, round_no: int) -> bool:
    """Whether devices evaluate the global model of ``round_no`` (every k-th and the last)."""
    return spec.client_evaluate and (round_no % spec.evaluate_every == 0 or round_no == spec.rounds)


class Scheduled(Wrapped):
    """Sends Flower's evaluate instructions only on the rounds :func:`evaluates` picks
    (Flower's loop asks every round); ``server_round`` counts from this ``start`` call."""

    def __init__(self, strategy: Strategy, spec: RunSpec, first_round: int) -> None:
        super().__init__(strategy)
        self.spec, self.first_round = spec, first_round

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not evaluates(self.spec, self.first_round + server_round - 1):
            return []
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        return self.strategy.aggregate_evaluate(server_round, replies) if replies else None


def evaluate_parent(
    grid: Grid,
    spec: RunSpec,
    parent: Weights,
    *,
    trainable: Trainable,
    preprocessing: Preprocessing,
    strategy: Strategy,
) -> list[Message]:
    """The devices' evaluation of the model a run starts from, before round 1: what a
    federatedly judged candidate must beat, on the same devices' held-out samples."""
    config = train_config(spec, trainable, preprocessing)
    messages = strategy.configure_evaluate(1, to_record(parent), config, grid)
    return list(grid.send_and_receive(messages, timeout=spec.round_timeout_s))


def close_async_round(grid: Grid, strategy: FedBuff) -> None:
    """Book what arrived since the last aggregation as one train exchange of the MQTT grid.

    The round hook reads the grid's exchanges (quorum, participants, bytes); an
    asynchronous run never calls ``send_and_receive``, which is what books them."""
    if not isinstance(grid, MqttGrid):
        return
    exchange, grid.current = grid.current, Exchange()
    exchange.message_type = "train"
    exchange.replies = len(strategy.last.nodes)
    exchange.participants = [grid.device_for(n) or str(n) for n in strategy.last.nodes]
    for reason in ("stale", "timeout", "unexpected", "wrong_arrays"):
        if strategy.dropped[reason]:
            exchange.failures[reason] += strategy.dropped.pop(reason)
    grid.exchanges.append(exchange)


# ------------------------------------------------------- stock Flower deployment --

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``run_config``: ``spec`` (RunSpec JSON), ``package`` (.efpkg path), ``output`` (.npz)."""
    spec = RunSpec.model_validate_json(str(context.run_config.get("spec", "{}")))
    package = read_package(Path(str(context.run_config["package"])))
    trainable = package.manifest.trainable
    if trainable is None:
        raise ValueError(f"{package.manifest.name} is not trainable")
    weights = run_rounds(
        grid,
        spec,
        package.weights(),
        trainable=trainable,
        preprocessing=package.manifest.preprocessing,
    )
    output = Path(str(context.run_config.get("output", "federated-weights.npz")))
    output.write_bytes(encode_weights(weights))
    print(json.dumps({"output": str(output), "rounds": spec.rounds}))
