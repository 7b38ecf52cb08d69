"""Split a user's ONNX classifier at an embedding tensor: a frozen backbone and a dense head.

Federated fine-tuning of a model someone brings keeps their graph up to a named
embedding tensor frozen (it runs in the device's runtime) and trains only the
dense layers after it, in the numpy trainer every agent has.  The head is read
out of the graph itself: after the embedding, only ``Gemm`` / ``MatMul`` (+
``Add``) with constant weights, ``Relu`` and a final ``Softmax`` (or none: the
logits) may follow, one chain ending at the model's output — the shape
``torch.onnx.export`` writes for ``nn.Linear``/``nn.ReLU`` and Keras/tf2onnx for
``Dense``.  Anything else is refused, naming the node and the fix.

The head becomes a :class:`~fleet_server.modelkit.network.Network` (dense
weights ``(in, out)``, the last layer trained through a softmax whatever the
graph emits, which leaves its argmax alone).  :func:`write_head` puts trained
weights back into the same initializers, so a federated candidate is the
user's own graph with a new head, every other byte of it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from edgefleet_contract.errors import PackageError
from edgefleet_contract.package import LayerSpec

from .network import Network

F32 = npt.NDArray[np.float32]
HEAD_OPS = ("Gemm", "MatMul", "Add", "Relu", "Softmax", "Flatten")


@dataclass(frozen=True)
class _Dense:
    """One dense layer of the head: where its weight and bias live in the graph."""

    weight: str
    bias: str
    transposed: bool
    """The initializer holds ``(out, in)`` (``Gemm`` with ``transB=1``, as torch writes)."""
    activation: str = "none"


@dataclass(frozen=True)
class HeadSplit:
    backbone: bytes
    """The user's graph from its inputs to the embedding tensor (the embedding is its output)."""
    network: Network
    """The trainable dense head over the embedding, with the graph's float weights."""


def split_head(model: bytes, embedding: str) -> HeadSplit:
    """The backbone and head of ``model`` split at tensor ``embedding`` (raises PackageError)."""
    graph = _load(model)
    layers = _head_layers(graph, embedding)
    init = {t.name: t for t in graph.graph.initializer}
    weights: dict[str, F32] = {}
    specs: list[LayerSpec] = []
    for i, dense in enumerate(layers):
        w = numpy_helper.to_array(init[dense.weight]).astype(np.float32)
        b = numpy_helper.to_array(init[dense.bias]).astype(np.float32).reshape(-1)
        weights[f"head{i}_w"] = np.ascontiguousarray(w.T if dense.transposed else w)
        weights[f"head{i}_b"] = b
        last = i == len(layers) - 1
        specs.append(
            LayerSpec(
                kind="dense",
                weight=f"head{i}_w",
                bias=f"head{i}_b",
                activation="softmax" if last else dense.activation,  # type: ignore[arg-type]
            )
        )
    features = int(weights["head0_w"].shape[0])
    try:
        network = Network((features,), tuple(specs), weights)
    except Exception as exc:
        raise PackageError(f"the head after {embedding!r} is not a dense stack: {exc}") from exc
    inputs = [i.name for i in graph.graph.input if i.name not in init]
    try:
        inferred = onnx.shape_inference.infer_shapes(graph)
        backbone = onnx.utils.Extractor(inferred).extract_model(inputs, [embedding])
    except Exception as exc:  # onnx raises several types for a graph it cannot cut
        raise PackageError(f"cannot cut the model at {embedding!r}: {exc}") from exc
    return HeadSplit(backbone.SerializeToString(), network)


def write_head(model: bytes, embedding: str, weights: Mapping[str, npt.ArrayLike]) -> bytes:
    """``model`` with the head after ``embedding`` set to ``weights`` (as :func:`split_head`
    names them); every other node and initializer stays as the user wrote it."""
    graph = _load(model)
    layers = _head_layers(graph, embedding)
    init = {t.name: t for t in graph.graph.initializer}
    for i, dense in enumerate(layers):
        w = np.asarray(weights[f"head{i}_w"], np.float32)
        b = np.asarray(weights[f"head{i}_b"], np.float32)
        old_w, old_b = (numpy_helper.to_array(init[n]) for n in (dense.weight, dense.bias))
        new_w = w.T if dense.transposed else w
        if new_w.shape != old_w.shape or b.size != old_b.size:
            raise PackageError(
                f"head layer {i}: weights {w.shape}/{b.shape} do not fit the graph's "
                f"{old_w.shape}/{old_b.shape}"
            )
        for name, array in ((dense.weight, new_w), (dense.bias, b.reshape(old_b.shape))):
            init[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), name))
    return bytes(graph.SerializeToString())


def _load(model: bytes) -> onnx.ModelProto:
    try:
        return onnx.load_from_string(model)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise PackageError(f"not a readable ONNX model: {exc}") from exc


def _head_layers(graph: onnx.ModelProto, embedding: str) -> list[_Dense]:
    """Walk the single chain of nodes from ``embedding`` to the model's output."""
    nodes = list(graph.graph.node)
    produced = [o for n in nodes for o in n.output]
    if embedding not in produced:
        hint = [n.input[0] for n in nodes if n.op_type in ("Gemm", "MatMul")][:5]
        raise PackageError(
            f"the model has no tensor {embedding!r} to split at; the inputs of its dense "
            f"layers are {hint} (give one of them as the embedding)"
        )
    outputs = [o.name for o in graph.graph.output]
    init = {t.name for t in graph.graph.initializer}
    layers: list[_Dense] = []
    tensor = embedding
    while tensor not in outputs:
        users = [n for n in nodes if tensor in n.input]
        if len(users) != 1:
            raise PackageError(
                f"tensor {tensor!r} feeds {len(users)} nodes; the head after the embedding "
                "must be one chain of dense layers ending at the model's output"
            )
        node = users[0]
        layers, tensor = _step(node, tensor, layers, init), node.output[0]
    if len(outputs) != 1:
        raise PackageError(f"a model with a trainable head has one output, this one has {outputs}")
    if not layers:
        raise PackageError(f"there are no dense layers after {embedding!r}")
    unbiased = [d.weight for d in layers if not d.bias]
    if unbiased:
        raise PackageError(
            f"the MatMul with weights {unbiased[0]!r} has no bias Add; the head's dense "
            "layers need a bias (export the layer with bias=True)"
        )
    return layers


def _step(node: onnx.NodeProto, tensor: str, layers: list[_Dense], init: set[str]) -> list[_Dense]:
    where = f"node {node.name or node.output[0]!r} ({node.op_type})"
    fix = "choose an embedding tensor after it, or a model whose head is Gemm/MatMul+Add/Relu"
    if node.op_type not in HEAD_OPS:
        raise PackageError(f"the head after the embedding is not dense: {where}; {fix}")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        ok = (
            attrs.get("transA", 0) == 0
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and len(node.input) == 3
            and node.input[0] == tensor
            and {node.input[1], node.input[2]} <= init
        )
        if not ok:
            raise PackageError(f"{where} is not a plain dense layer with constant weights; {fix}")
        return [*layers, _Dense(node.input[1], node.input[2], bool(attrs.get("transB", 0)))]
    if node.op_type == "MatMul":
        if node.input[0] != tensor or node.input[1] not in init:
            raise PackageError(f"{where} does not multiply by constant weights; {fix}")
        return [*layers, _Dense(node.input[1], "", False)]
    if node.op_type == "Add":
        other = [i for i in node.input if i != tensor]
        if not layers or layers[-1].bias or len(other) != 1 or other[0] not in init:
            raise PackageError(f"{where} is not the bias of a MatMul; {fix}")
        last = layers[-1]
        return [*layers[:-1], _Dense(last.weight, other[0], False)]
    if node.op_type == "Flatten" and not layers:
        return layers  # flattening the embedding: the trainer reads it as flat rows
    if not layers:
        raise PackageError(
            f"the head after the embedding must start with a dense layer (Gemm or MatMul), "
            f"not {where}; {fix}"
        )
    if node.op_type == "Relu" and layers[-1].activation != "none":
        raise PackageError(f"{where} does not follow a dense layer; {fix}")
    if node.op_type == "Relu":
        last = layers[-1]
        return [*layers[:-1], _Dense(last.weight, last.bias, last.transposed, "relu")]
    if node.op_type == "Flatten":
        raise PackageError(f"{where} follows a dense layer; {fix}")
    return layers  # Softmax: the head is trained through a softmax anyway
