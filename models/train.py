"""Seeded numpy training for the reference networks (mini-batch Adam on cross-entropy).

It trains any :class:`~fleet_server.modelkit.network.Network` made of the
manifest's layer kinds, so the architectures in :mod:`models.build` are the
only place a model is described.  Backward passes mirror the forward ones in
:mod:`fleet_server.modelkit.network` (convolutions through im2col).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from edgefleet_contract.package import LayerSpec
from fleet_server.modelkit.network import F32, Network, activate, apply_layer, im2col


def init_network(
    input_shape: tuple[int, ...], layers: list[LayerSpec], widths: list[int], *, seed: int
) -> Network:
    """He-initialised weights; ``widths`` gives each dense/conv2d layer's output size in order."""
    rng = np.random.default_rng(seed)
    weights: dict[str, F32] = {}
    shape = input_shape
    units = iter(widths)
    kernel = 3
    for layer in layers:
        if layer.kind in ("dense", "conv2d"):
            assert layer.weight and layer.bias
            out = next(units)
            if layer.kind == "dense":
                w_shape: tuple[int, ...] = (shape[0], out)
            else:
                w_shape = (kernel, kernel, shape[2], out)
            fan_in = math.prod(w_shape[:-1])
            weights[layer.weight] = (rng.standard_normal(w_shape) * math.sqrt(2 / fan_in)).astype(
                np.float32
            )
            weights[layer.bias] = np.zeros(out, np.float32)
            shape = (out,) if layer.kind == "dense" else (*shape[:2], out)
        elif layer.kind == "flatten":
            shape = (math.prod(shape),)
        elif layer.kind == "maxpool2d":
            s = layer.size or 1
            shape = (shape[0] // s, shape[1] // s, shape[2])
        else:
            s = layer.size or 1
            shape = (shape[0] * s, shape[1] * s, shape[2])
    return Network(input_shape, tuple(layers), weights)


def train(
    network: Network,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    epochs: int,
    seed: int,
    batch: int = 32,
    lr: float = 1e-3,
) -> Network:
    """Train on preprocessed rows ``x`` and integer labels ``y``; returns new weights."""
    data = np.asarray(x, dtype=np.float32).reshape((-1, *network.input_shape))
    labels = np.asarray(y, dtype=np.int64)
    params = {k: v.copy() for k, v in network.weights.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    rng = np.random.default_rng(seed)
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(labels))
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            grads = _gradients(network.layers, params, data[idx], labels[idx])
            step += 1
            for k, g in grads.items():
                m[k] = 0.9 * m[k] + 0.1 * g
                v[k] = 0.999 * v[k] + 0.001 * g * g
                m_hat = m[k] / (1 - 0.9**step)
                v_hat = v[k] / (1 - 0.999**step)
                params[k] -= (lr * m_hat / (np.sqrt(v_hat) + 1e-8)).astype(np.float32)
    return network.with_weights(params)


def _gradients(
    layers: tuple[LayerSpec, ...], params: dict[str, F32], x: F32, y: npt.NDArray[np.int64]
) -> dict[str, F32]:
    inputs: list[F32] = []
    out = x
    for layer in layers:
        inputs.append(out)
        out = apply_layer(layer, out, params)
    # Softmax + cross-entropy: the gradient at the last layer's logits.
    grad = out.copy()
    grad[np.arange(len(y)), y] -= 1.0
    grad /= len(y)
    grads: dict[str, F32] = {}
    for layer, inp in zip(reversed(layers), reversed(inputs), strict=True):
        grad = _backward(layer, inp, grad, params, grads, last=layer is layers[-1])
    return grads


def _backward(
    layer: LayerSpec,
    x: F32,
    grad: F32,
    params: dict[str, F32],
    grads: dict[str, F32],
    *,
    last: bool,
) -> F32:
    if layer.kind == "flatten":
        return grad.reshape(x.shape)
    if layer.kind == "upsample2d":
        f = layer.size or 1
        n, h, w, c = x.shape
        return np.asarray(grad.reshape(n, h, f, w, f, c).sum(axis=(2, 4)), np.float32)
    if layer.kind == "maxpool2d":
        p = layer.size or 1
        pooled = apply_layer(layer, x, params)
        spread = np.repeat(np.repeat(pooled, p, axis=1), p, axis=2)
        g = np.repeat(np.repeat(grad, p, axis=1), p, axis=2)
        return np.asarray(g * (x == spread), dtype=np.float32)
    assert layer.weight is not None and layer.bias is not None
    w = params[layer.weight]
    if layer.kind == "dense":
        z = x @ w + params[layer.bias]
    else:
        cols = im2col(x, w.shape[0], w.shape[1])
        z = cols @ w.reshape(-1, w.shape[3]) + params[layer.bias]
    if not last and layer.activation == "relu":
        grad = grad * (activate(z, "relu") > 0)
    if layer.kind == "dense":
        grads[layer.weight] = x.T @ grad
        grads[layer.bias] = grad.sum(axis=0)
        return np.asarray(grad @ w.T, dtype=np.float32)
    kh, kw, cin, cout = w.shape
    flat = grad.reshape(-1, cout)
    grads[layer.weight] = (cols.reshape(-1, kh * kw * cin).T @ flat).reshape(w.shape)
    grads[layer.bias] = flat.sum(axis=0)
    dcols = (flat @ w.reshape(-1, cout).T).reshape(*x.shape[:3], kh * kw * cin)
    n, h, wd, _ = x.shape
    padded = np.zeros((n, h + kh - 1, wd + kw - 1, cin), np.float32)
    for i in range(kh):
        for j in range(kw):
            k = (i * kw + j) * cin
            padded[:, i : i + h, j : j + wd, :] += dcols[..., k : k + cin]
    return padded[:, kh // 2 : kh // 2 + h, kw // 2 : kw // 2 + wd, :]
