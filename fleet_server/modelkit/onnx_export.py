"""Float32 ONNX files from a :class:`Network`, written with ``onnx.helper``.

int8 versions are made from them by :mod:`.quantize`.

The graph takes preprocessed features ``(batch, features)`` named
``features`` and returns ``probabilities``; images are reshaped inside the
graph and convolved in ONNX's NCHW layout, then transposed back before
flattening so the dense weights keep the manifest's NHWC flatten order.
Opset 17 / IR 8 keeps the files loadable by the ONNX Runtime releases still
found on older boards.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from .network import Network

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
OPSET = 17
IR_VERSION = 8


def to_onnx(network: Network, *, name: str = "model") -> bytes:
    """A float32 ONNX model computing ``network.forward``."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    current = INPUT_NAME

    def const(label: str, value: npt.ArrayLike, dtype: type = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), label))
        return label

    def node(op: str, inputs: list[str], label: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [label], name=label, **attrs))
        return label

    nchw = len(network.input_shape) == 3
    if nchw:
        shape = const("image_shape", [-1, *network.input_shape], np.int64)
        current = node("Reshape", [current, shape], "image_nhwc")
        current = node("Transpose", [current], "image_nchw", perm=[0, 3, 1, 2])
    for i, layer in enumerate(network.layers):
        tag = f"l{i}_{layer.kind}"
        if layer.kind == "flatten":
            if nchw:
                current = node("Transpose", [current], f"{tag}_nhwc", perm=[0, 2, 3, 1])
                nchw = False
            flat = const(f"{tag}_shape", [0, -1], np.int64)
            current = node("Reshape", [current, flat], tag)
            continue
        if layer.kind == "maxpool2d":
            p = layer.size or 1
            current = node("MaxPool", [current], tag, kernel_shape=[p, p], strides=[p, p])
            continue
        if layer.kind == "upsample2d":
            f = float(layer.size or 1)
            scales = const(f"{tag}_scales", [1.0, 1.0, f, f])
            current = node(
                "Resize",
                [current, "", scales],
                tag,
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
            continue
        assert layer.weight is not None and layer.bias is not None
        w, b = network.weights[layer.weight], network.weights[layer.bias]
        if layer.kind == "conv2d":
            kh, kw = int(w.shape[0]), int(w.shape[1])
            weight = const(layer.weight, w.transpose(3, 2, 0, 1))  # HWIO -> OIHW
            pads = [kh // 2, kw // 2, kh // 2, kw // 2]
            current = node(
                "Conv",
                [current, weight, const(layer.bias, b)],
                tag,
                kernel_shape=[kh, kw],
                pads=pads,
            )
        else:
            product = node("MatMul", [current, const(layer.weight, w)], f"{tag}_matmul")
            current = node("Add", [product, const(layer.bias, b)], tag)
        if layer.activation == "relu":
            current = node("Relu", [current], f"{tag}_relu")
        elif layer.activation == "softmax":
            current = node("Softmax", [current], f"{tag}_softmax", axis=-1)
    nodes[-1].output[0] = OUTPUT_NAME
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", network.features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", network.classes])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgefleet-modelkit"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())
