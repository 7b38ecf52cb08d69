"""Local training of a package's trainable float weights, in plain numpy.

The round's instruction carries the global weights and the manifest's
:class:`~edgefleet_contract.package.Trainable` description (layer list), so the
device trains exactly the network the server aggregates, whatever package it
happens to serve.  Dense/flatten stacks (the classifier head or a whole small
MLP) are supported; a convolutional trainable part is refused with a clear
error rather than trained slowly on a small CPU.

FedProx: ``mu > 0`` adds ``mu/2 * ||w - w_global||^2`` to the loss, which keeps
non-IID clients from drifting far from the global model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgefleet_contract.errors import ModelError
from edgefleet_contract.package import LayerSpec, Trainable
from edgefleet_contract.scoring import cross_entropy, loss_and_accuracy

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class LocalConfig:
    epochs: int = 1
    lr: float = 0.05
    batch_size: int = 32
    proximal_mu: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class FitResult:
    weights: dict[str, F32]
    examples: int
    loss: float
    accuracy: float


class Mlp:
    """A dense/flatten network over named float32 weights."""

    def __init__(self, trainable: Trainable) -> None:
        for layer in trainable.layers:
            if layer.kind not in ("dense", "flatten"):
                raise ModelError(
                    f"on-device training supports dense layers only; this model has {layer.kind}"
                )
        if trainable.layers[-1].activation != "softmax":
            raise ModelError("the trainable part must end in a softmax dense layer")
        self.layers: list[LayerSpec] = list(trainable.layers)
        self.features = int(np.prod(trainable.input_shape))
        self.shapes = {p.name: tuple(p.shape) for p in trainable.params}

    def check(self, weights: Mapping[str, F32]) -> None:
        if set(weights) != set(self.shapes):
            raise ModelError(f"weights {sorted(weights)} do not match {sorted(self.shapes)}")
        for name, shape in self.shapes.items():
            if tuple(weights[name].shape) != shape:
                raise ModelError(f"weight {name} has shape {weights[name].shape}, want {shape}")

    def forward(self, w: Mapping[str, F32], x: F32) -> list[F32]:
        """Activations of every layer (input first)."""
        outs = [x.reshape(len(x), -1)]
        for layer in self.layers:
            if layer.kind == "flatten":
                outs.append(outs[-1])
                continue
            assert layer.weight is not None and layer.bias is not None
            z = outs[-1] @ w[layer.weight] + w[layer.bias]
            if layer.activation == "relu":
                z = np.maximum(z, 0.0)
            elif layer.activation == "softmax":
                e = np.exp(z - z.max(axis=1, keepdims=True))
                z = e / e.sum(axis=1, keepdims=True)
            outs.append(z.astype(np.float32))
        return outs

    def gradients(
        self, w: Mapping[str, F32], x: F32, y: npt.NDArray[np.int64]
    ) -> tuple[dict[str, F32], float]:
        outs = self.forward(w, x)
        probs = outs[-1]
        n = len(y)
        loss = cross_entropy(probs, y)
        delta = probs.copy()
        delta[np.arange(n), y] -= 1.0
        delta /= n
        grads: dict[str, F32] = {}
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if layer.kind == "flatten":
                continue
            assert layer.weight is not None and layer.bias is not None
            if layer.activation == "relu":
                delta = delta * (outs[i + 1] > 0)
            grads[layer.weight] = (outs[i].T @ delta).astype(np.float32)
            grads[layer.bias] = delta.sum(axis=0).astype(np.float32)
            delta = delta @ w[layer.weight].T
        return grads, loss


def evaluate(
    mlp: Mlp, weights: Mapping[str, F32], x: F32, y: npt.NDArray[np.int64]
) -> tuple[float, float]:
    """(loss, accuracy) on preprocessed rows."""
    if len(y) == 0:
        return 0.0, 0.0
    return loss_and_accuracy(mlp.forward(weights, x)[-1], y)


def train(
    mlp: Mlp,
    start: Mapping[str, F32],
    x: F32,
    y: npt.NDArray[np.int64],
    config: LocalConfig,
) -> FitResult:
    """Mini-batch SGD (with the FedProx term when ``proximal_mu > 0``)."""
    mlp.check(start)
    if len(y) == 0:
        raise ModelError("no labelled samples of this model's input size on the device")
    anchor = {k: np.asarray(v, np.float32) for k, v in start.items()}
    w = {k: v.copy() for k, v in anchor.items()}
    rng = np.random.default_rng(config.seed)
    batch = max(1, config.batch_size)
    for _ in range(max(1, config.epochs)):
        order = rng.permutation(len(y))
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            grads, _ = mlp.gradients(w, x[idx], y[idx])
            for k, g in grads.items():
                if config.proximal_mu > 0:
                    g = g + config.proximal_mu * (w[k] - anchor[k])
                w[k] = (w[k] - config.lr * g).astype(np.float32)
    loss, acc = evaluate(mlp, w, x, y)
    return FitResult(w, len(y), loss, acc)
