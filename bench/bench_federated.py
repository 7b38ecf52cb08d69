"""Federated quality on non-IID digits, and bytes on the wire per client per round.

Ten simulated devices each hold a Dirichlet(alpha=0.5, seeded) share of the digits
training split (some see only a few classes).  Each runs the agent's real learning
worker (Flower ClientApp, numpy training) and the server runs Flower's FedAvg and
FedProx through the real MQTT grid code (protobuf serialisation, chunking to a
16 kB payload limit, reply validation); only the broker hop is replaced by an
in-process hand-over here (the round-overhead benchmark uses the real broker).
The 64-32-10 MLP starts from the same seeded initialisation for all runs, and
the baseline is that model trained centrally on the pooled data with the same
optimiser for as many epochs as a device trains in all rounds together, in the
same run.  Goal: federated accuracy >= 0.95 of centralised within 20 rounds."""

from __future__ import annotations

import time

import numpy as np

from agent.learning.trainer import LocalConfig, Mlp, evaluate, prepare, train
from agent.learning.worker import LearningWorker
from edgefleet_contract import flower_compat
from fleet_server.federation.app import run_rounds
from fleet_server.federation.grid import MqttGrid
from fleet_server.federation.spec import LocalTraining, RunSpec
from fleet_server.federation.validate import UpdateCheck
from fleet_server.modelkit.digits import PREPROCESSING, split
from fleet_server.modelkit.partition import dirichlet_parts

from ._lab import table

CLIENTS = 10
ROUNDS = 20
ALPHA = 0.5
SEED = 3
LOCAL = LocalTraining(epochs=5, lr=0.1, batch_size=16)


def start_network() -> tuple[object, dict[str, np.ndarray]]:
    from models.build import REFERENCES
    from models.train import init_network

    ref = REFERENCES["digits"]
    network = init_network(ref.input_shape, ref.layers, ref.widths, seed=SEED)
    return network.trainable, {k: np.asarray(v) for k, v in network.weights.items()}


def federated(strategy: str) -> tuple[list[float], dict[str, float]]:
    data = split()
    trainable, initial = start_network()
    mlp = Mlp(trainable)  # type: ignore[arg-type]
    x_test = prepare(data.x_test, PREPROCESSING)
    parts = dirichlet_parts(data.y_train, CLIENTS, ALPHA, SEED)
    grid: MqttGrid
    workers: dict[str, LearningWorker] = {}
    for i, part in enumerate(parts):
        device = f"sim-{i}"
        rows, labels = data.x_train[part], data.y_train[part]
        workers[device] = LearningWorker(
            lambda frame, d=device: grid.deliver(d, frame) is None,  # type: ignore[misc]
            lambda width, r=rows, y=labels: (r, y),  # type: ignore[misc]
            max_payload=16 * 1024,
        )
    grid = MqttGrid(
        lambda d, frame: workers[d].on_frame(frame),
        eligible=lambda: list(workers),
        max_payload=16 * 1024,
        validator=UpdateCheck(),
    )
    flower_compat.set_task_identity(1)
    curve: list[float] = []

    def hook(round_no: int, weights: dict[str, np.ndarray]) -> dict[str, float]:
        loss, acc = evaluate(mlp, weights, x_test, data.y_test)
        curve.append(acc)
        return {"loss": loss, "accuracy": acc}

    local = LOCAL.model_copy(update={"proximal_mu": 0.01 if strategy == "fedprox" else 0.0})
    spec = RunSpec(
        model="digits",
        rounds=ROUNDS,
        min_clients=CLIENTS,
        strategy=strategy,
        local=local,  # type: ignore[arg-type]
    )
    run_rounds(
        grid,
        spec,
        initial,
        trainable=trainable,
        preprocessing=PREPROCESSING,
        on_round=hook,  # type: ignore[arg-type]
    )
    for worker in workers.values():
        worker.stop()
    train_ex = [e for e in grid.exchanges if e.message_type == "train"]
    sent = sum(e.sent for e in train_ex)
    replies = sum(e.replies for e in train_ex)
    traffic = {
        "down": sum(e.bytes_out for e in train_ex) / max(1, sent),
        "up": sum(e.bytes_in for e in train_ex) / max(1, replies),
        "raw": float(sum(v.size * 4 for v in initial.values())),
    }
    return curve, traffic


def centralised() -> float:
    data = split()
    trainable, initial = start_network()
    mlp = Mlp(trainable)  # type: ignore[arg-type]
    x = prepare(data.x_train, PREPROCESSING)
    config = LocalConfig(epochs=LOCAL.epochs * ROUNDS, lr=LOCAL.lr, batch_size=LOCAL.batch_size)
    outcome = train(mlp, initial, x, data.y_train, config)
    return evaluate(mlp, outcome.weights, prepare(data.x_test, PREPROCESSING), data.y_test)[1]


def run() -> list[dict[str, object]]:
    started = time.perf_counter()
    base = centralised()
    rows: list[dict[str, object]] = [
        {
            "benchmark": "centralised test accuracy (same model, pooled data)",
            "value": f"{base:.4f}",
            "baseline": "-",
            "ratio": "1.00",
            "note": f"{LOCAL.epochs * ROUNDS} epochs",
        },
    ]
    traffic: dict[str, float] = {}
    for strategy in ("fedavg", "fedprox"):
        curve, traffic = federated(strategy)
        shown = ", ".join(f"{a:.2f}" for a in curve)
        rows.append(
            {
                "benchmark": f"{strategy} test accuracy after {ROUNDS} rounds",
                "value": f"{curve[-1]:.4f}",
                "baseline": f"{base:.4f}",
                "ratio": f"{curve[-1] / base:.3f}",
                "note": f"per round: {shown}",
            }
        )
    rows += [
        {
            "benchmark": "bytes per client per round, down (instruction)",
            "value": f"{traffic['down']:,.0f}",
            "baseline": f"{traffic['raw']:,.0f}",
            "ratio": f"{traffic['down'] / traffic['raw']:.2f}",
            "note": "baseline: raw float32 size of the trainable weights; includes config",
        },
        {
            "benchmark": "bytes per client per round, up (update)",
            "value": f"{traffic['up']:,.0f}",
            "baseline": f"{traffic['raw']:,.0f}",
            "ratio": f"{traffic['up'] / traffic['raw']:.2f}",
            "note": f"whole benchmark took {time.perf_counter() - started:.0f} s",
        },
    ]
    return rows


if __name__ == "__main__":
    print(table(run()))
