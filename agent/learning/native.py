"""Plain federated ``train``/``evaluate`` on the device, without Flower.

The server's grid sends a stock strategy's instructions as
:mod:`edgefleet_contract.flwire` envelopes: global arrays, and a config with
the manifest's trainable layer list, preprocessing and local hyper-parameters
(the same keys Flower's ``ConfigRecord`` carries, see :mod:`.client_app`).  This
module answers them with numpy only, so every agent install can train.

Every refusal has a reason code (:data:`flwire.NO_SAMPLES` ...) that the server
counts in the round's failures column.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edgefleet_contract import flwire
from edgefleet_contract.errors import ModelError
from edgefleet_contract.messages import Scalar
from edgefleet_contract.package import Preprocessing, Trainable

from .trainer import LocalConfig, Mlp, evaluate, train

if TYPE_CHECKING:
    from .backbone import Backbone

Dataset = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]
DataSource = Callable[[int], Dataset]
"""Labelled raw rows of a given width (a model's input size)."""


class Refused(ModelError):
    """The device will not answer this instruction with an update; ``code`` says why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def local_config(config: Mapping[str, Scalar]) -> LocalConfig:
    """The local hyper-parameters of an instruction's config (defaults where absent)."""

    def num(key: str, default: float) -> float:
        value = config.get(key, default)
        return float(value) if isinstance(value, int | float) else default

    return LocalConfig(
        epochs=int(num("local-epochs", 1)),
        lr=num("lr", 0.05),
        batch_size=int(num("batch-size", 32)),
        proximal_mu=num("proximal-mu", 0.0),
        seed=int(num("server-round", 0)),
    )


def network(config: Mapping[str, Scalar]) -> tuple[Mlp, Preprocessing, str | None]:
    """The trainable network, preprocessing and embedding (``None``: the network reads
    the model's input) an instruction describes."""
    if "trainable" not in config:
        raise Refused(flwire.BAD_INSTRUCTION, "the instruction's config has no 'trainable'")
    try:
        trainable = Trainable.model_validate_json(str(config["trainable"]))
        preprocessing = Preprocessing.model_validate_json(str(config.get("preprocessing", "{}")))
    except ValueError as exc:
        raise Refused(flwire.BAD_INSTRUCTION, f"the instruction's model is invalid: {exc}") from exc
    try:
        return Mlp(trainable), preprocessing, trainable.embedding
    except ModelError as exc:
        raise Refused(flwire.UNSUPPORTED_MODEL, str(exc)) from exc


def split(dataset: Dataset, config: Mapping[str, Scalar], kind: str) -> Dataset:
    """The rows a ``kind`` instruction uses: with ``heldout-every`` = n, every n-th sample
    is held out — never trained on, evaluated on in federated evaluation (and never sent)."""
    raw, y = dataset
    every = config.get("heldout-every", 0)
    if isinstance(every, int | float) and int(every) > 1 and len(y):
        held = np.arange(len(y)) % int(every) == int(every) - 1
        keep = held if kind == "evaluate" else ~held
        raw, y = np.asarray(raw)[keep], np.asarray(y)[keep]
    return raw, y


def _data(width: int, data: DataSource, config: Mapping[str, Scalar], kind: str) -> Dataset:
    """:func:`split` of the device's samples of ``width``; refused when nothing is left."""
    raw, y = split(data(width), config, kind)
    if len(y) == 0:
        raise Refused(
            flwire.NO_SAMPLES,
            f"no labelled samples of width {width} on this device "
            "(labels arrive through the local API's /v1/feedback)",
        )
    return raw, y


def _start(mlp: Mlp, arrays: flwire.Arrays) -> dict[str, npt.NDArray[np.float32]]:
    weights = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
    try:
        mlp.check(weights)
    except ModelError as exc:
        raise Refused(flwire.BAD_INSTRUCTION, str(exc)) from exc
    return weights


def answer(
    instruction: flwire.FlEnvelope,
    arrays: flwire.Arrays,
    data: DataSource,
    backbone: Backbone | None = None,
) -> tuple[flwire.FlEnvelope, flwire.Arrays]:
    """The reply to a native ``train`` or ``evaluate`` instruction (raises :class:`Refused`).

    A head over an embedding trains on the served package's ``backbone`` output."""
    mlp, preprocessing, embedding = network(instruction.config)
    start = _start(mlp, arrays)
    if embedding is None:
        raw, y = _data(mlp.features, data, instruction.config, instruction.kind)
        x = preprocessing.apply(raw)
    else:
        if backbone is None or not backbone.matches(embedding, mlp.features):
            raise Refused(
                flwire.WRONG_MODEL,
                f"the round trains a head over {embedding!r}; the model this device serves "
                "has no such backbone",
            )
        raw, y = _data(backbone.width, data, instruction.config, instruction.kind)
        x = _embed(backbone, raw)
    if instruction.kind == "evaluate":
        loss, acc = evaluate(mlp, start, x, y)
        metrics = {"num-examples": float(len(y)), "loss": loss, "accuracy": acc}
        return flwire.reply(instruction, metrics), {}
    outcome = train(mlp, start, x, y, local_config(instruction.config))
    # Replies keep each array's dtype: server-side optimisers such as FedAdam send
    # float64, and a reply that does not match its instruction is refused.
    out: flwire.Arrays = {k: outcome.weights[k].astype(arrays[k].dtype) for k in arrays}
    metrics = {
        "num-examples": float(outcome.examples),
        "loss": outcome.loss,
        "accuracy": outcome.accuracy,
    }
    return flwire.reply(instruction, metrics), out


def _embed(backbone: Backbone, raw: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    try:
        return backbone(raw)
    except ModelError as exc:
        raise Refused(flwire.UNSUPPORTED_MODEL, f"the backbone cannot run: {exc}") from exc
