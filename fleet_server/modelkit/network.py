"""The float network every exporter starts from, and its numpy reference forward pass.

A :class:`Network` is the manifest's own layer description
(:class:`~edgefleet_contract.package.LayerSpec`) plus named float32 weights, so
there is one description of a model: the one a package ships.  A federated
round that produces new weights for a package's ``trainable`` part rebuilds the
same network with :meth:`Network.from_package` + :meth:`Network.with_weights`
and hands it back to :func:`~fleet_server.modelkit.build.build_package`.

The numpy forward pass is the ground truth the exported files are checked
against; it is written for clarity, not speed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgefleet_contract.errors import ModelError
from edgefleet_contract.package import LayerSpec, ModelPackage, ParamSpec, Trainable

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Network:
    input_shape: tuple[int, ...]
    """One preprocessed sample: ``(features,)`` or an NHWC image ``(h, w, c)``."""
    layers: tuple[LayerSpec, ...]
    weights: Mapping[str, F32]

    def __post_init__(self) -> None:
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            shape = _check_layer(i, layer, shape, self.weights)
        if len(shape) != 1 or self.layers[-1].activation != "softmax":
            raise ModelError("the network must end in a dense layer with a softmax activation")

    @property
    def features(self) -> int:
        return math.prod(self.input_shape)

    @property
    def classes(self) -> int:
        last = self.layers[-1]
        assert last.bias is not None
        return int(self.weights[last.bias].shape[0])

    @property
    def trainable(self) -> Trainable:
        params = [
            ParamSpec(name=name, shape=list(self.weights[name].shape))
            for layer in self.layers
            for name in (layer.weight, layer.bias)
            if name is not None
        ]
        return Trainable(
            input_shape=list(self.input_shape), layers=list(self.layers), params=params
        )

    @classmethod
    def from_package(cls, package: ModelPackage) -> Network:
        """The float network a trainable package was built from."""
        trainable = package.manifest.trainable
        if trainable is None:
            raise ModelError(f"{package.manifest.name} {package.manifest.version} is not trainable")
        return cls(tuple(trainable.input_shape), tuple(trainable.layers), package.weights())

    def with_weights(self, weights: Mapping[str, npt.ArrayLike]) -> Network:
        """The same architecture with new weights (e.g. the result of a federated round)."""
        missing = sorted(set(self.weights) - set(weights))
        if missing:
            raise ModelError(f"new weights lack {missing[0]}")
        arrays = {k: np.asarray(weights[k], dtype=np.float32) for k in self.weights}
        for name, array in arrays.items():
            if array.shape != self.weights[name].shape:
                raise ModelError(
                    f"weight {name} has shape {array.shape}, expected {self.weights[name].shape}"
                )
            if not np.isfinite(array).all():
                raise ModelError(f"weight {name} has NaN or infinite values")
        return Network(self.input_shape, self.layers, arrays)

    def forward(self, x: npt.ArrayLike) -> F32:
        """Probabilities for preprocessed rows ``(n, features)``."""
        out = np.asarray(x, dtype=np.float32).reshape((-1, *self.input_shape))
        for layer in self.layers:
            out = apply_layer(layer, out, self.weights)
        return out


def _check_layer(
    index: int, layer: LayerSpec, shape: tuple[int, ...], weights: Mapping[str, F32]
) -> tuple[int, ...]:
    where = f"layer {index} ({layer.kind})"
    if layer.kind == "flatten":
        return (math.prod(shape),)
    if layer.kind in ("maxpool2d", "upsample2d"):
        size = layer.size or 1
        if len(shape) != 3:
            raise ModelError(f"{where}: needs an image input, got {shape}")
        if layer.kind == "upsample2d":
            return (shape[0] * size, shape[1] * size, shape[2])
        if shape[0] % size or shape[1] % size:
            raise ModelError(f"{where}: size {size} does not tile input {shape}")
        return (shape[0] // size, shape[1] // size, shape[2])
    assert layer.weight is not None and layer.bias is not None
    if layer.weight not in weights or layer.bias not in weights:
        raise ModelError(f"{where}: weights {layer.weight}/{layer.bias} are missing")
    w, b = weights[layer.weight], weights[layer.bias]
    if layer.kind == "dense":
        if len(shape) != 1 or w.shape != (shape[0], b.shape[0]) or b.ndim != 1:
            raise ModelError(f"{where}: weight {w.shape} / bias {b.shape} do not fit input {shape}")
        return (int(b.shape[0]),)
    if len(shape) != 3 or w.ndim != 4 or w.shape[2] != shape[2] or w.shape[3] != b.shape[0]:
        raise ModelError(f"{where}: weight {w.shape} / bias {b.shape} do not fit input {shape}")
    if w.shape[0] % 2 == 0 or w.shape[1] % 2 == 0:
        raise ModelError(f"{where}: 'same' padding needs odd kernel sizes, got {w.shape[:2]}")
    return (shape[0], shape[1], int(b.shape[0]))


def apply_layer(layer: LayerSpec, x: F32, weights: Mapping[str, F32]) -> F32:
    if layer.kind == "flatten":
        return x.reshape(x.shape[0], -1)
    if layer.kind == "maxpool2d":
        p = layer.size or 1
        n, h, w, c = x.shape
        return np.asarray(x.reshape(n, h // p, p, w // p, p, c).max(axis=(2, 4)), np.float32)
    if layer.kind == "upsample2d":
        f = layer.size or 1
        return np.repeat(np.repeat(x, f, axis=1), f, axis=2)
    assert layer.weight is not None and layer.bias is not None
    w, b = weights[layer.weight], weights[layer.bias]
    z = x @ w + b if layer.kind == "dense" else conv2d_same(x, w) + b
    return activate(z, layer.activation)


def conv2d_same(x: F32, w: F32) -> F32:
    """Stride-1 'same' convolution of NHWC ``x`` with HWIO ``w`` (im2col + one matmul)."""
    return np.asarray(im2col(x, w.shape[0], w.shape[1]) @ w.reshape(-1, w.shape[3]), np.float32)


def im2col(x: F32, kh: int, kw: int) -> F32:
    """Patches ``(n, h, w, kh * kw * c)`` of a zero-padded NHWC batch, in HWI order."""
    n, h, w, c = x.shape
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    cols = [padded[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)]
    return np.concatenate(cols, axis=-1).reshape(n, h, w, kh * kw * c)


def activate(z: F32, activation: str) -> F32:
    if activation == "relu":
        return np.maximum(z, 0.0)
    if activation == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float32)
    return z
