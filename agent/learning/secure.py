"""The SecAgg+ side of the device's ClientApp (Flower's ``secaggplus_mod``).

Flower 1.41 implements SecAgg+ for its compatibility (``NumPyClient``) API
only, so a secure run uses that shape: the same local training as
:mod:`.client_app`, with the parameters as an ordered list (the order of the
manifest's ``params``) and the layer description in the fit config.  The mod
masks the update before it leaves the device; the server can only unmask the
sum of enough devices' updates, never one of them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from flwr.app import Message
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Config, NDArrays, Scalar

from edgefleet_contract.package import Preprocessing, Trainable

from .native import DataSource
from .trainer import LocalConfig, Mlp, evaluate, train

SECAGG_RECORD = "secaggplus_configs"


def is_secure(message: Message) -> bool:
    return message.has_content() and SECAGG_RECORD in message.content.config_records


class _Round(NamedTuple):
    mlp: Mlp
    names: list[str]
    weights: dict[str, npt.NDArray[np.float32]]
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]


class SampleClient(NumPyClient):
    def __init__(self, data: DataSource) -> None:
        self.data = data
        self.last_update: dict[str, npt.NDArray[np.float32]] | None = None
        """The plaintext weights of the last fit (kept on the device; tests compare)."""

    def _setup(self, parameters: NDArrays, config: Config) -> _Round:
        """What fit and evaluate both start from: the network the config describes, the
        server's parameters by name, and this device's rows prepared for that network."""
        trainable = Trainable.model_validate_json(str(config["trainable"]))
        preprocessing = Preprocessing.model_validate_json(str(config.get("preprocessing", "{}")))
        mlp = Mlp(trainable)
        names = [p.name for p in trainable.params]
        weights = {n: np.asarray(p, np.float32) for n, p in zip(names, parameters, strict=True)}
        raw, y = self.data(mlp.features)
        return _Round(mlp, names, weights, preprocessing.apply(raw), y)

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        r = self._setup(parameters, config)
        local = LocalConfig(
            epochs=int(config.get("local-epochs", 1)),
            lr=float(config.get("lr", 0.05)),
            batch_size=int(config.get("batch-size", 32)),
            proximal_mu=float(config.get("proximal-mu", 0.0)),
            seed=int(config.get("server-round", 0)),
        )
        outcome = train(r.mlp, r.weights, r.x, r.y, local)
        self.last_update = outcome.weights
        weights = [outcome.weights[n] for n in r.names]
        return weights, outcome.examples, {"loss": outcome.loss, "accuracy": outcome.accuracy}

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        r = self._setup(parameters, config)
        loss, acc = evaluate(r.mlp, r.weights, r.x, r.y)
        return loss, max(1, len(r.y)), {"accuracy": acc}


def secure_app(client: SampleClient) -> ClientApp:
    return ClientApp(client_fn=lambda context: client.to_client(), mods=[secaggplus_mod])
