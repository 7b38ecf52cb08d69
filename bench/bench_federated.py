"""Federated quality on harshly non-IID digits, several seeds, and bytes per round.

Ten simulated devices each hold a Dirichlet(alpha, seeded) share of the digits
training split (``fleet_server.modelkit.partition``; at alpha 0.1 most devices
hold 2-5 classes).  Each runs the agent's real learning worker (Flower
ClientApp, the device trainer ``agent/learning/trainer.py``) and the server runs
the real Flower strategy of the run spec through the real MQTT grid code
(protobuf serialisation, chunking to a 16 kB payload limit, reply validation);
only the broker hop is an in-process hand-over here (bench_fl_rounds uses the
real broker).  Every strategy runs at its defaults (``RunSpec`` and
``strategies.SERVER_LR``), 20 rounds, for seeds 0-4 (the seed picks the split,
the 64-32-10 MLP's initialisation and the devices' shuffling).

Two centralised baselines per seed, same initialisation, pooled data:
"same way" trains with the devices' optimiser (SGD, lr and batch of the
default ``local`` settings) for as many epochs as a device trains in all
rounds; "tuned" is the best test accuracy over a grid of learning rates and
epoch counts — an upper bound, so a ratio against it is conservative.  Every
ratio below is against the tuned baseline of the same seed.

Stragglers: a round on devices 7-9 (30%) takes 5, 7.5 and 10 times as long as on
the others (0.1 s; a wait added outside the lock that serialises the simulated
devices' numpy work, since a real fleet trains in parallel and ten threads on
two cores cannot).  Synchronous runs wait for them every round (or, with
over-selection 0.3, close at the fastest 7); the buffered asynchronous strategy
(fedbuff, at its defaults) aggregates every K updates, weighting stale ones
down.  Both get the same number of device updates (rounds x devices), so the
asynchronous run's fast devices contribute more of them.  The gap is sync minus
async accuracy, three seeds; the labelled row compares with sync FedAvg (the
same server step, so it measures asynchrony alone), the next with the default.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from agent.learning.trainer import LocalConfig, Mlp, evaluate, train
from agent.learning.worker import LearningWorker
from edgefleet_common import flower_compat
from fleet_server.federation.app import RoundHook, run_rounds
from fleet_server.federation.deadline import round_close
from fleet_server.federation.grid import MqttGrid
from fleet_server.federation.spec import RunSpec
from fleet_server.federation.validate import UpdateCheck
from fleet_server.modelkit.digits import PREPROCESSING, Split, split
from fleet_server.modelkit.partition import dirichlet_parts

CLIENTS = 10
ROUNDS = 20
SEEDS = (0, 1, 2, 3, 4)
ALPHAS = (0.1, 0.5)
STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi")
TUNING = [(lr, epochs) for lr in (0.1, 0.3) for epochs in (100, 200)]


def start_network(seed: int = 3) -> tuple[Any, dict[str, np.ndarray]]:
    from models.build import REFERENCES
    from models.train import init_network

    ref = REFERENCES["digits"]
    network = init_network(ref.input_shape, ref.layers, ref.widths, seed=seed)
    return network.trainable, {k: np.asarray(v) for k, v in network.weights.items()}


def digits_rounds(
    grid: Grid,
    spec: RunSpec,
    start: tuple[Any, dict[str, np.ndarray]],
    on_round: RoundHook,
    strategy: Strategy | None = None,
) -> None:
    """``spec``'s rounds over ``grid`` from ``start`` (:func:`start_network`), on the
    digits preprocessing the devices apply: the run every federated benchmark measures."""
    trainable, initial = start
    run_rounds(
        grid,
        spec,
        initial,
        trainable=trainable,
        preprocessing=PREPROCESSING,
        on_round=on_round,
        strategy=strategy,
    )


PARSE = threading.Lock()
"""Devices here share one process, and numpy's array-header parser (``ast``) is not safe on
several threads at once on CPython 3.11 (python/cpython#106905): each device decodes and
trains under this lock, and replies are delivered under it (one ingest thread, as on a
server).  On a real fleet every device is its own process."""


class BenchWorker(LearningWorker):
    """The agent's learning worker.  With ``seconds`` set, a round on this device takes at
    least that long (its training plus a wait outside the lock): the devices of a real fleet
    train in parallel, which ten threads sharing two cores cannot show."""

    def __init__(self, *args: Any, seconds: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds = seconds

    def answer(self, message: Any) -> Any:
        with PARSE:
            reply = super().answer(message)
        time.sleep(max(0.0, self.seconds - self.last_train_s))
        return reply


@dataclass
class Outcome:
    curve: list[float]
    wall_s: float
    grid: MqttGrid


RETRIES: list[str] = []
"""Runs repeated after CPython 3.11's spurious ``SystemError`` from ``ast`` (the server's run
thread decoding while a late reply is validated; python/cpython#106905)."""


def federated(spec: RunSpec, alpha: float, seed: int, **kw: Any) -> Outcome:
    """:func:`federated_once`, repeated (and counted in RETRIES) if CPython crashed it."""
    try:
        return federated_once(spec, alpha, seed, **kw)
    except SystemError as exc:
        RETRIES.append(f"{spec.strategy} alpha {alpha} seed {seed}: {exc}")
        return federated_once(spec, alpha, seed, **kw)


def federated_once(
    spec: RunSpec,
    alpha: float,
    seed: int,
    *,
    data: Split | None = None,
    pace: dict[int, float] | None = None,
) -> Outcome:
    """One run of ``spec`` over CLIENTS in-process devices; held-out accuracy per round.
    ``pace``: device index -> the least time one of its rounds takes."""
    data = data or split()
    start = start_network(seed)
    mlp = Mlp(start[0])
    x_test = PREPROCESSING.apply(data.x_test)
    parts = dirichlet_parts(data.y_train, CLIENTS, alpha, seed)
    grid: MqttGrid
    workers: dict[str, LearningWorker] = {}

    def deliver(device: str, frame: bytes) -> bool:
        with PARSE:
            grid.deliver(device, frame)
        return True

    for i, part in enumerate(parts):
        device = f"sim-{i}"
        rows, labels = data.x_train[part], data.y_train[part]
        workers[device] = BenchWorker(
            lambda frame, d=device: deliver(d, frame),
            lambda width, r=rows, y=labels: (r, y),
            max_payload=16 * 1024,
            seconds=(pace or {}).get(i, 0.0),
        )
    grid = MqttGrid(
        lambda d, frame: workers[d].on_frame(frame),
        eligible=lambda: list(workers),
        max_payload=16 * 1024,
        validator=UpdateCheck(max_update_norm=spec.max_update_norm),
        close=round_close(spec),
    )
    flower_compat.set_task_identity(1)
    curve: list[float] = []

    def hook(round_no: int, weights: dict[str, np.ndarray]) -> dict[str, float]:
        loss, acc = evaluate(mlp, weights, x_test, data.y_test)
        curve.append(acc)
        return {"loss": loss, "accuracy": acc}

    started = time.perf_counter()
    try:
        digits_rounds(grid, spec, start, hook)
    finally:
        for worker in workers.values():
            worker.stop()
    return Outcome(curve, time.perf_counter() - started, grid)


def centralised(seed: int, lr: float, epochs: int, batch: int, data: Split) -> float:
    trainable, initial = start_network(seed)
    mlp = Mlp(trainable)
    x = PREPROCESSING.apply(data.x_train)
    config = LocalConfig(epochs=epochs, lr=lr, batch_size=batch, seed=seed)
    outcome = train(mlp, initial, x, data.y_train, config)
    return evaluate(mlp, outcome.weights, PREPROCESSING.apply(data.x_test), data.y_test)[1]


def default_spec(strategy: str, **update: Any) -> RunSpec:
    return RunSpec.model_validate(
        {"model": "digits", "rounds": ROUNDS, "min_clients": CLIENTS, "strategy": strategy} | update
    )


def baselines(data: Split) -> tuple[dict[int, float], dict[int, float], str]:
    """Per seed: centralised accuracy trained the devices' way, and the tuned best."""
    local = RunSpec().local
    same = {
        s: centralised(s, local.lr, local.epochs * ROUNDS, local.batch_size, data) for s in SEEDS
    }
    grid = {
        (lr, ep): [centralised(s, lr, ep, local.batch_size, data) for s in SEEDS]
        for lr, ep in TUNING
    }
    (lr, ep), accs = max(grid.items(), key=lambda kv: statistics.mean(kv[1]))
    tuned = {s: max(same[s], a) for s, a in zip(SEEDS, accs, strict=True)}
    return same, tuned, f"lr {lr}, {ep} epochs"


def ratios(outcomes: Sequence[Outcome], tuned: dict[int, float]) -> list[float]:
    return [o.curve[-1] / tuned[s] for s, o in zip(SEEDS, outcomes, strict=True)]


def async_spec(**update: Any) -> RunSpec:
    """fedbuff at its defaults, given as many device updates as a synchronous run."""
    k = RunSpec().buffer_size
    return default_spec("fedbuff", rounds=ROUNDS * CLIENTS // k, min_clients=k, **update)


def row(label: str, value: str, baseline: str, ratio: str, note: str) -> dict[str, object]:
    return {"benchmark": label, "value": value, "baseline": baseline, "ratio": ratio, "note": note}


def quality_rows(data: Split, tuned: dict[int, float]) -> tuple[list[dict[str, object]], Any]:
    rows: list[dict[str, object]] = []
    headline: dict[float, list[float]] = {}
    last: Outcome | None = None
    for alpha in ALPHAS:
        for name in (*STRATEGIES, "fedbuff"):
            spec = async_spec() if name == "fedbuff" else default_spec(name)
            outcomes = [federated(spec, alpha, s, data=data) for s in SEEDS]
            if name == RunSpec().strategy:
                last = outcomes[-1]
            accs = [o.curve[-1] for o in outcomes]
            r = ratios(outcomes, tuned)
            if name == RunSpec().strategy:
                headline[alpha] = r
            rows.append(
                row(
                    f"alpha {alpha}, {name}: accuracy mean / worst of {len(SEEDS)} seeds",
                    f"{statistics.mean(accs):.4f} / {min(accs):.4f}",
                    "tuned centralised",
                    f"{statistics.mean(r):.3f} / {min(r):.3f}",
                    "per seed: " + ", ".join(f"{a:.3f}" for a in accs),
                )
            )
    best = RunSpec().strategy
    for kind, fn in (("mean", statistics.mean), ("worst", min)):
        rows.insert(
            0,
            row(
                f"FL accuracy ratio, alpha 0.1, {kind} of {len(SEEDS)} seeds",
                f"{fn(headline[0.1]):.3f}",
                "tuned centralised, same seed",
                f"{fn(headline[0.1]):.3f}",
                f"{best} at its defaults, {CLIENTS} clients, {ROUNDS} rounds; per seed: "
                + ", ".join(f"{x:.3f}" for x in headline[0.1]),
            ),
        )
    rows[0], rows[1] = rows[1], rows[0]
    return rows, last


STRAGGLER_SEEDS = (0, 1, 2)
FAST_S = 0.1
PACE = {i: FAST_S for i in range(CLIENTS)} | {7: 5 * FAST_S, 8: 7.5 * FAST_S, 9: 10 * FAST_S}
"""30% stragglers: devices 7-9 take 5, 7.5 and 10 times as long per round as the others."""


def straggler_rows(data: Split) -> list[dict[str, object]]:
    runs = {
        "sync fedavg": default_spec("fedavg"),
        f"sync {RunSpec().strategy}": default_spec(RunSpec().strategy),
        "sync fedavg, over-selection 0.3": default_spec("fedavg", over_select=0.3, min_clients=7),
        "async fedbuff": async_spec(),
    }
    rows: list[dict[str, object]] = []
    for alpha in (0.1, 0.5):
        got = {
            name: [federated(spec, alpha, s, data=data, pace=PACE) for s in STRAGGLER_SEEDS]
            for name, spec in runs.items()
            if alpha == 0.1 or "over-selection" not in name
        }
        acc = {n: [o.curve[-1] for o in os] for n, os in got.items()}
        wall = {n: statistics.mean(o.wall_s for o in os) for n, os in got.items()}
        for sync in ("sync fedavg", f"sync {RunSpec().strategy}"):
            gaps = [s - a for s, a in zip(acc[sync], acc["async fedbuff"], strict=True)]
            label = (
                "async FL accuracy gap to sync, 30% stragglers"
                if (alpha, sync) == (0.1, "sync fedavg")
                else f"async fedbuff accuracy gap to {sync}, alpha {alpha}, 30% stragglers"
            )
            rows.append(
                row(
                    label,
                    f"{statistics.mean(gaps):.4f}",
                    f"{statistics.mean(acc[sync]):.4f}",
                    f"{statistics.mean(acc['async fedbuff']):.4f}",
                    f"alpha {alpha}, {sync} minus async fedbuff, mean of seeds "
                    f"{list(STRAGGLER_SEEDS)}, worst seed {max(gaps):.4f}; baseline column: "
                    "sync accuracy, ratio column: async accuracy",
                )
            )
        for name in got:
            rows.append(
                row(
                    f"{name}, alpha {alpha}, 30% stragglers: wall time, "
                    f"{ROUNDS * CLIENTS} device updates",
                    f"{wall[name]:.1f} s",
                    f"{wall['sync fedavg']:.1f} s",
                    f"{wall[name] / wall['sync fedavg']:.2f}",
                    f"accuracy mean / worst {statistics.mean(acc[name]):.4f} / "
                    f"{min(acc[name]):.4f}; baseline: sync fedavg",
                )
            )
    return rows


def traffic_rows(outcome: Outcome, initial: dict[str, np.ndarray]) -> list[dict[str, object]]:
    train_ex = [e for e in outcome.grid.exchanges if e.message_type == "train"]
    down = sum(e.bytes_out for e in train_ex) / max(1, sum(e.sent for e in train_ex))
    up = sum(e.bytes_in for e in train_ex) / max(1, sum(e.replies for e in train_ex))
    raw = float(sum(v.size * 4 for v in initial.values()))
    note = "baseline: raw float32 size of the trainable weights; includes config"
    return [
        row(
            "bytes per client per round, down (instruction)",
            f"{down:,.0f}",
            f"{raw:,.0f}",
            f"{down / raw:.2f}",
            note,
        ),
        row(
            "bytes per client per round, up (update)",
            f"{up:,.0f}",
            f"{raw:,.0f}",
            f"{up / raw:.2f}",
            "the default strategy",
        ),
    ]


def run() -> list[dict[str, object]]:
    started = time.perf_counter()
    data = split()
    same, tuned, how = baselines(data)
    rows = [
        row(
            "centralised accuracy, trained the devices' way (mean / worst of seeds)",
            f"{statistics.mean(same.values()):.4f} / {min(same.values()):.4f}",
            "-",
            "-",
            f"SGD lr {RunSpec().local.lr}, batch {RunSpec().local.batch_size}, "
            f"{RunSpec().local.epochs * ROUNDS} epochs",
        ),
        row(
            "centralised accuracy, tuned (mean / worst of seeds)",
            f"{statistics.mean(tuned.values()):.4f} / {min(tuned.values()):.4f}",
            "-",
            "-",
            f"best of {len(TUNING)} settings by mean: {how}; every ratio is against this",
        ),
    ]
    quality, last = quality_rows(data, tuned)
    rows += quality
    rows += straggler_rows(data)
    rows += traffic_rows(last, start_network(SEEDS[-1])[1])
    rows[-1]["note"] = (
        f"{rows[-1]['note']}; whole benchmark took {time.perf_counter() - started:.0f} s; "
        f"runs repeated after a CPython SystemError: {len(RETRIES)}"
    )
    return rows
