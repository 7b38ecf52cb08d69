"""Which Conv/Gemm/MatMul weights an ONNX file really stores as int8.

A file's int8 claim is checked by inspection, not trusted: :func:`weight_ops`
follows each Conv/Gemm/MatMul weight back through DequantizeLinear and
data-movement ops to the constant that stores it, so a "fake-quantized" file
whose weights are float initializers behind QuantizeLinear/DequantizeLinear
counts as float.  The packer, the builder and the registry all ask here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from edgefleet_contract.errors import ModelError, PackageError
from edgefleet_contract.package import ModelPackage

WEIGHT_OP_TYPES = ("Conv", "Gemm", "MatMul")
"""The ops an int8 claim is about: where the weights, and nearly all the arithmetic, are."""
_INTEGER_FORMS = {
    "ConvInteger": "Conv",
    "QLinearConv": "Conv",
    "MatMulInteger": "MatMul",
    "QLinearMatMul": "MatMul",
    "QGemm": "Gemm",
}
"""QOperator-format nodes (dynamic mode writes these) and the float op each replaces."""
_WEIGHT_INPUTS = {"Conv": (1,), "Gemm": (0, 1), "MatMul": (0, 1)}
"""Inputs that hold a weight when constant (a bias stays int32/float by design)."""
_INTEGER_WEIGHT_INPUTS = {
    "ConvInteger": (1,),
    "MatMulInteger": (0, 1),
    "QLinearConv": (3,),
    "QLinearMatMul": (0, 3),
    "QGemm": (0, 3),
}
_PASS_THROUGH = {
    "Identity",
    "Transpose",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Cast",
    "QuantizeLinear",
    "DequantizeLinear",
}
"""Ops a stored weight may pass through on its way to the op that uses it."""
_INT_TYPES = {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4}


@dataclass(frozen=True)
class WeightOp:
    """A Conv/Gemm/MatMul (or its integer form) and how its constant weight is stored."""

    node: str
    op_type: str
    """The float op it is or replaces: Conv, Gemm or MatMul."""
    stored: str
    """The stored weight's element type: ``int8``, ``uint8``, ``float``, ``float16``..."""

    @property
    def int8(self) -> bool:
        return self.stored in ("int8", "uint8", "int4", "uint4")

    def __str__(self) -> str:
        return f"{self.op_type} {self.node} ({self.stored} weight)"


def weight_ops(model: bytes) -> list[WeightOp]:
    """Every Conv/Gemm/MatMul of ``model`` (subgraphs included) that takes a constant weight.

    A weight is traced to the constant that stores it through DequantizeLinear,
    QuantizeLinear and data-movement ops; what that constant holds decides.  Ops
    whose operands are all computed (attention's activation x activation products)
    have no weight and are not listed.
    """
    proto = load_onnx(model, "the model")
    graphs = list(_graphs(proto.graph))
    constants: dict[str, int] = {}
    producers: dict[str, onnx.NodeProto] = {}
    for graph in graphs:
        for init in graph.initializer:
            constants[init.name] = init.data_type
        for node in graph.node:
            for out in node.output:
                producers[out] = node
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        constants[node.output[0]] = attr.t.data_type
    found = []
    for graph in graphs:
        for node in graph.node:
            positions = _WEIGHT_INPUTS.get(node.op_type) or _INTEGER_WEIGHT_INPUTS.get(
                node.op_type, ()
            )
            op_type = _INTEGER_FORMS.get(node.op_type, node.op_type)
            stored = [
                _stored_type(node.input[i], constants, producers)
                for i in positions
                if i < len(node.input) and node.input[i]
            ]
            kinds = [s for s in stored if s is not None]
            if kinds:
                worst = next((k for k in kinds if k not in _INT_TYPES), kinds[0])
                name = node.name or node.output[0]
                found.append(WeightOp(name, op_type, _type_name(worst)))
    return found


def float_weight_ops(model: bytes) -> list[str]:
    """The Conv/Gemm/MatMul ops of ``model`` whose weight is still stored as a float:
    what must be empty before a file may be called int8."""
    return [str(op) for op in weight_ops(model) if not op.int8]


def int8_op_counts(model: bytes) -> dict[str, int]:
    """How many Conv/Gemm/MatMul ops hold int8 weights, by op type (for the manifest)."""
    return dict(sorted(Counter(op.op_type for op in weight_ops(model) if op.int8).items()))


def check_int8_claim(package: ModelPackage) -> None:
    """Refuse (:class:`PackageError`) an ONNX package that declares int8 but is not.

    Its Conv/Gemm/MatMul weights must all be stored int8, and the op counts its
    manifest records (if it records them) must be what the file holds.  TFLite
    files are taken as they are: their tensors carry their own types.
    """
    m = package.manifest
    if m.runtime != "onnx" or m.quantization.dtype != "int8":
        return
    what = f"{m.name}@{m.version} ({m.flavor})"
    try:
        model = package.model_bytes
        left = float_weight_ops(model)
        counts = int8_op_counts(model)
    except ModelError as exc:
        raise PackageError(f"{what}: {exc}") from exc
    if left:
        raise PackageError(
            f"{what} declares int8, but {len(left)} of its Conv/Gemm/MatMul weights are "
            f"stored float ({'; '.join(left[:3])}{'; ...' if len(left) > 3 else ''}): it is "
            "not an int8 model.  Quantize the float model for real (fleetctl models pack "
            "MODEL.onnx --quantize int8) or declare it float32"
        )
    recorded = m.quantization.int8_ops
    if recorded is not None and recorded != counts:
        raise PackageError(
            f"{what}: the manifest records int8 ops {recorded}, the model file holds {counts}; "
            "rebuild the package"
        )


def _stored_type(
    name: str, constants: Mapping[str, int], producers: Mapping[str, onnx.NodeProto]
) -> int | None:
    """The element type of the constant behind ``name``, or None if it is computed."""
    for _ in range(64):  # a chain longer than this is not a stored weight
        if name in constants:
            return constants[name]
        node = producers.get(name)
        if node is None or node.op_type not in _PASS_THROUGH or not node.input:
            return None
        name = node.input[0]
    return None


def _type_name(data_type: int) -> str:
    return str(TensorProto.DataType.Name(data_type).lower())


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def load_onnx(model: bytes, what: str) -> onnx.ModelProto:
    try:
        return onnx.load_model_from_string(model)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelError(f"{what} is not a readable ONNX file: {exc}") from exc
