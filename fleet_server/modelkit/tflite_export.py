"""TFLite files written straight from the flatbuffer schema (no TensorFlow needed).

The schema's object API ships with ai-edge-litert.  Two flavours:

* float32: every tensor float;
* int8 dynamic-range: weights stored as symmetric int8 (per output channel),
  activations float.  The runtime quantizes each layer's input on the fly
  (asymmetrically, which is markedly more accurate on ReLU activations) and
  runs int8 kernels.  Inputs and outputs stay float, so preprocessing is the
  same for both flavours.

The graph mirrors :mod:`.onnx_export`: ``features (batch, n)`` in,
``probabilities`` out; TFLite is natively NHWC so images need no transposes.
The batch dimension is dynamic (``shape_signature`` -1) and resized by the
runtime per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import flatbuffers
import numpy as np
import numpy.typing as npt
from ai_edge_litert import schema_py_generated as fb

from edgefleet_contract.package import LayerSpec

from .network import Network

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
_IDENTIFIER = b"TFL3"
_ACTIVATIONS = {"none": fb.ActivationFunctionType.NONE, "relu": fb.ActivationFunctionType.RELU}


@dataclass
class _Graph:
    """Tensors, buffers and operators accumulated while walking the network."""

    int8_weights: bool
    tensors: list[fb.TensorT] = field(default_factory=list)
    buffers: list[fb.BufferT] = field(default_factory=lambda: [fb.BufferT()])
    operators: list[fb.OperatorT] = field(default_factory=list)
    opcodes: list[tuple[int, int]] = field(default_factory=list)

    def tensor(
        self,
        name: str,
        shape: list[int],
        *,
        data: npt.NDArray[np.generic] | None = None,
        dtype: int = fb.TensorType.FLOAT32,
        quant: fb.QuantizationParametersT | None = None,
    ) -> int:
        t = fb.TensorT()
        t.name = name
        t.shape = [1 if d == -1 else d for d in shape]
        t.shapeSignature = shape if -1 in shape else None
        t.type = dtype
        t.quantization = quant
        if data is not None:
            buf = fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def weight(self, name: str, w: npt.NDArray[np.float32]) -> int:
        """A weight tensor (output channels first); int8 per-channel if quantizing."""
        if not self.int8_weights:
            return self.tensor(name, list(w.shape), data=w.astype(np.float32))
        flat = w.reshape(w.shape[0], -1)
        scale = np.maximum(np.abs(flat).max(axis=1), 1e-8) / 127.0
        q = np.clip(np.round(flat / scale[:, None]), -127, 127).astype(np.int8).reshape(w.shape)
        params = fb.QuantizationParametersT()
        params.scale = scale.astype(np.float32).tolist()
        params.zeroPoint = [0] * len(params.scale)
        params.quantizedDimension = 0
        return self.tensor(name, list(w.shape), data=q, dtype=fb.TensorType.INT8, quant=params)

    def op(
        self,
        code: int,
        inputs: list[int],
        outputs: list[int],
        options_type: int = fb.BuiltinOptions.NONE,
        options: object = None,
        version: int = 1,
    ) -> None:
        key = (code, version)
        if key not in self.opcodes:
            self.opcodes.append(key)
        o = fb.OperatorT()
        o.opcodeIndex = self.opcodes.index(key)
        o.inputs, o.outputs = inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.operators.append(o)


def to_tflite(network: Network, *, int8_weights: bool = False) -> bytes:
    """A TFLite model computing ``network.forward`` (optionally dynamic-range int8)."""
    g = _Graph(int8_weights)
    first = g.tensor(INPUT_NAME, [-1, network.features])
    current = first
    shape: list[int] = [-1, *network.input_shape]
    if len(network.input_shape) == 3:
        current = _reshape(g, current, shape, "image")
    for i, layer in enumerate(network.layers):
        step = _SHAPING.get(layer.kind, _weighted)
        current, shape = step(g, network, layer, current, shape, f"l{i}_{layer.kind}")
    g.tensors[current].name = OUTPUT_NAME
    return _finish(g, first, current)


Step = tuple[int, list[int]]
"""A layer's output tensor and its shape."""


def _flatten(
    g: _Graph, network: Network, layer: LayerSpec, current: int, shape: list[int], tag: str
) -> Step:
    shape = [-1, int(np.prod(shape[1:]))]
    return _reshape(g, current, shape, tag), shape


def _upsample(
    g: _Graph, network: Network, layer: LayerSpec, current: int, shape: list[int], tag: str
) -> Step:
    f = layer.size or 1
    shape = [-1, shape[1] * f, shape[2] * f, shape[3]]
    size = g.tensor(
        f"{tag}_size", [2], data=np.asarray(shape[1:3], np.int32), dtype=fb.TensorType.INT32
    )
    out = g.tensor(tag, shape)
    g.op(
        fb.BuiltinOperator.RESIZE_NEAREST_NEIGHBOR,
        [current, size],
        [out],
        fb.BuiltinOptions.ResizeNearestNeighborOptions,
        fb.ResizeNearestNeighborOptionsT(),
    )
    return out, shape


def _maxpool(
    g: _Graph, network: Network, layer: LayerSpec, current: int, shape: list[int], tag: str
) -> Step:
    p = layer.size or 1
    shape = [-1, shape[1] // p, shape[2] // p, shape[3]]
    out = g.tensor(tag, shape)
    opts = fb.Pool2DOptionsT()
    opts.padding = fb.Padding.VALID
    opts.strideW = opts.strideH = opts.filterWidth = opts.filterHeight = p
    g.op(fb.BuiltinOperator.MAX_POOL_2D, [current], [out], fb.BuiltinOptions.Pool2DOptions, opts)
    return out, shape


def _weighted(
    g: _Graph, network: Network, layer: LayerSpec, current: int, shape: list[int], tag: str
) -> Step:
    """A conv2d or dense layer, its activation fused (a softmax is an operator of its own)."""
    assert layer.weight is not None and layer.bias is not None
    w, b = network.weights[layer.weight], network.weights[layer.bias]
    bias = g.tensor(layer.bias, [int(b.shape[0])], data=b.astype(np.float32))
    fused = _ACTIVATIONS.get(layer.activation, fb.ActivationFunctionType.NONE)
    pre = f"{tag}_logits" if layer.activation == "softmax" else tag
    options: fb.Conv2DOptionsT | fb.FullyConnectedOptionsT
    if layer.kind == "conv2d":
        weight = g.weight(layer.weight, w.transpose(3, 0, 1, 2))  # HWIO -> OHWI
        shape = [-1, shape[1], shape[2], int(w.shape[3])]
        options = fb.Conv2DOptionsT()
        options.padding = fb.Padding.SAME
        options.strideW = options.strideH = options.dilationWFactor = options.dilationHFactor = 1
        op, kind, int8_version = (
            fb.BuiltinOperator.CONV_2D, fb.BuiltinOptions.Conv2DOptions, 5,
        )  # fmt: skip
    else:
        weight = g.weight(layer.weight, np.ascontiguousarray(w.T))  # (in, out) -> (out, in)
        shape = [-1, int(w.shape[1])]
        options = fb.FullyConnectedOptionsT()
        options.asymmetricQuantizeInputs = g.int8_weights
        op, kind, int8_version = (
            fb.BuiltinOperator.FULLY_CONNECTED, fb.BuiltinOptions.FullyConnectedOptions, 9,
        )  # fmt: skip
    options.fusedActivationFunction = fused
    out = g.tensor(pre, shape)
    version = int8_version if g.int8_weights else 1
    g.op(op, [current, weight, bias], [out], kind, options, version=version)
    if layer.activation != "softmax":
        return out, shape
    current, out = out, g.tensor(tag, shape)
    opts = fb.SoftmaxOptionsT()
    opts.beta = 1.0
    g.op(fb.BuiltinOperator.SOFTMAX, [current], [out], fb.BuiltinOptions.SoftmaxOptions, opts)
    return out, shape


_SHAPING = {"flatten": _flatten, "upsample2d": _upsample, "maxpool2d": _maxpool}


def _reshape(g: _Graph, source: int, shape: list[int], name: str) -> int:
    target = g.tensor(
        f"{name}_shape", [len(shape)], data=np.asarray(shape, np.int32), dtype=fb.TensorType.INT32
    )
    out = g.tensor(name, shape)
    opts = fb.ReshapeOptionsT()
    opts.newShape = shape
    g.op(
        fb.BuiltinOperator.RESHAPE, [source, target], [out], fb.BuiltinOptions.ReshapeOptions, opts
    )
    return out


def _finish(g: _Graph, first: int, last: int) -> bytes:
    subgraph = fb.SubGraphT()
    subgraph.tensors, subgraph.operators = g.tensors, g.operators
    subgraph.inputs, subgraph.outputs = [first], [last]
    subgraph.name = "main"
    model = fb.ModelT()
    model.version = 3
    model.description = "edgefleet modelkit"
    model.subgraphs = [subgraph]
    model.buffers = g.buffers
    codes = []
    for code, version in g.opcodes:
        oc = fb.OperatorCodeT()
        oc.builtinCode = code
        oc.deprecatedBuiltinCode = min(code, 127)
        oc.version = version
        codes.append(oc)
    model.operatorCodes = codes
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=_IDENTIFIER)
    return bytes(builder.Output())
