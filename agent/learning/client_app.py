"""The device's Flower ``ClientApp``: train/evaluate on locally stored labelled samples.

A stock Flower app in the standard shape, so the same code runs under Flower's
own SuperNode (``flwr run`` with ``node_config`` ``samples-db = "<path>"``) and
in-process in the agent (which calls ``app(message, context)`` on each frame).

The instruction's ``config`` record carries everything the device needs beyond
the global weights: the manifest's trainable layer list and preprocessing
(JSON), and the local hyper-parameters.  Local DP is applied with Flower's own
``LocalDpMod`` when the run asks for it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import LocalDpMod

from edgefleet_contract.errors import ModelError
from edgefleet_contract.package import Preprocessing, Trainable

from ..samples import SampleStore
from . import native
from .native import Dataset, DataSource
from .trainer import LocalConfig, Mlp, evaluate, train


def _config(message: Message) -> ConfigRecord:
    records = message.content.config_records
    if "config" not in records:
        raise ModelError("the instruction has no 'config' record")
    return records["config"]


def _network(config: ConfigRecord) -> tuple[Mlp, Preprocessing]:
    trainable = Trainable.model_validate_json(str(config["trainable"]))
    preprocessing = Preprocessing.model_validate_json(str(config.get("preprocessing", "{}")))
    return Mlp(trainable), preprocessing


def _arrays(message: Message) -> dict[str, npt.NDArray[np.float32]]:
    record = message.content.array_records.get("arrays")
    if record is None:
        raise ModelError("the instruction has no 'arrays' record")
    return {k: np.asarray(v.numpy(), np.float32) for k, v in record.items()}


def _dtypes(message: Message) -> dict[str, np.dtype[np.generic]]:
    """What the server sent each array as; replies keep it (server-side optimisers such as
    FedAdam send float64, and the reply must match the instruction to be accepted)."""
    record = message.content.array_records["arrays"]
    return {k: np.dtype(v.numpy().dtype) for k, v in record.items()}


def _scalars(config: ConfigRecord) -> dict[str, bool | int | float | str]:
    return {k: v for k, v in config.items() if isinstance(v, bool | int | float | str)}


def local_config(config: ConfigRecord) -> LocalConfig:
    return native.local_config(_scalars(config))


def train_message(message: Message, data: DataSource) -> Message:
    config = _config(message)
    mlp, preprocessing = _network(config)
    start = _arrays(message)
    raw, y = native.split(data(mlp.features), _scalars(config), "train")
    outcome = train(mlp, start, preprocessing.apply(raw), y, local_config(config))
    dtypes = _dtypes(message)
    arrays = ArrayRecord({k: Array(outcome.weights[k].astype(dtypes[k])) for k in start})
    metrics = MetricRecord(
        {"num-examples": outcome.examples, "loss": outcome.loss, "accuracy": outcome.accuracy}
    )
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)


def evaluate_message(message: Message, data: DataSource) -> Message:
    config = _config(message)
    mlp, preprocessing = _network(config)
    weights = _arrays(message)
    mlp.check(weights)
    raw, y = native.split(data(mlp.features), _scalars(config), "evaluate")
    loss, acc = evaluate(mlp, weights, preprocessing.apply(raw), y)
    metrics = MetricRecord({"num-examples": max(1, len(y)), "loss": loss, "accuracy": acc})
    return Message(RecordDict({"metrics": metrics}), reply_to=message)


def build_app(data: DataSource, *, local_dp: LocalDpMod | None = None) -> ClientApp:
    """A ClientApp over ``data``; ``local_dp`` clips and noises every update it sends (only
    training replies: an evaluation reply carries figures, no arrays to noise)."""
    app = ClientApp()

    @app.train(mods=[local_dp] if local_dp is not None else None)
    def _train(message: Message, context: Context) -> Message:
        return train_message(message, data)

    @app.evaluate()
    def _evaluate(message: Message, context: Context) -> Message:
        return evaluate_message(message, data)

    return app


def local_dp_for(message: Message) -> LocalDpMod | None:
    """The run's local-DP mod, from the instruction's config (absent: none)."""
    if not message.has_content() or "config" not in message.content.config_records:
        return None
    config = message.content.config_records["config"]
    epsilon = config.get("local-dp-epsilon")
    if not isinstance(epsilon, int | float) or epsilon <= 0:
        return None
    return LocalDpMod(
        clipping_norm=float(config.get("local-dp-clip", 1.0)),  # type: ignore[arg-type]
        sensitivity=float(config.get("local-dp-sensitivity", 1.0)),  # type: ignore[arg-type]
        epsilon=float(epsilon),
        delta=float(config.get("local-dp-delta", 1e-5)),  # type: ignore[arg-type]
    )


def _store_source(context: Context) -> DataSource:
    path = Path(str(context.node_config.get("samples-db", "samples.db")))

    def source(width: int) -> Dataset:
        store = SampleStore(path, max_samples=1 << 30)
        try:
            return store.dataset(width)
        finally:
            store.close()

    return source


# The app Flower's own SuperNode loads (``clientapp = "agent.learning.client_app:app"``).
app = ClientApp()


@app.train()
def _stock_train(message: Message, context: Context) -> Message:
    return train_message(message, _store_source(context))


@app.evaluate()
def _stock_evaluate(message: Message, context: Context) -> Message:
    return evaluate_message(message, _store_source(context))
