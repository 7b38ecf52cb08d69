"""Real int8 for any ONNX file, and the checks that prove a file is int8.

``quantize_onnx`` takes a float ONNX model as this project's exporter,
``torch.onnx.export``, tf2onnx or skl2onnx write it and returns an int8 one:

* ``static`` (default): QDQ int8 calibrated on the caller's samples.  Weights
  are int8 per output channel, activations uint8 per tensor from the ranges the
  samples produce: with uint8 activations ONNX Runtime's CPU provider fuses every
  QDQ Conv into QLinearConv (its u8s8 kernels); with int8 activations it left 6 of
  a ResNet's 9 Convs as dequantize -> float Conv -> quantize, slower than float.
  Every op type ONNX Runtime's QDQ quantizer knows is quantized, Gemm included:
  ``quant_pre_process`` fuses MatMul+Add into Gemm, and a quantizer told only
  about MatMul used to leave every dense layer float.
  Softmax and the model's outputs stay float, so probabilities and regression
  values keep their precision.  Weights use 7 of their 8 bits (``reduce_range``):
  on x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) ONNX Runtime's
  int8 kernels add pairs of 8-bit products in 16 bits, which saturates with
  full-range weights; a package made on a VNNI machine then computes other
  answers on an AVX2 device (the digits MLP's probabilities moved by up to 0.18,
  and the torch CNN agreed with float on 98.5% of samples instead of 100%).
* ``dynamic``: weights int8, activations quantized at run time
  (MatMulInteger/ConvInteger); no calibration data needed.  ONNX Runtime has no
  dynamic Gemm, so constant-weight Gemms are rewritten as MatMul + Add first.

The claim is then checked by inspection, not trusted (:mod:`.weights`), and
:mod:`.agreement` measures how far the int8 file's outputs are from the float
file's on the same samples.  This module re-exports both: ``quantize.X`` is the
one surface packers, the builder and the registry use.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from edgefleet_contract.errors import ModelError
from edgefleet_contract.package import Agreement, OutputAgreement, Quantization

from .agreement import (
    DEFAULT_MIN_TOP1,
    Feeds,
    agreement,
    calibration_feeds,
    compare_outputs,
    require_agreement,
    run_onnx,
)
from .weights import (
    WEIGHT_OP_TYPES,
    WeightOp,
    check_int8_claim,
    float_weight_ops,
    int8_op_counts,
    load_onnx,
    weight_ops,
)

__all__ = [
    "DEFAULT_MIN_TOP1",
    "WEIGHT_OP_TYPES",
    "Agreement",
    "Feeds",
    "OutputAgreement",
    "QuantizeMode",
    "WeightOp",
    "agreement",
    "calibration_feeds",
    "check_int8_claim",
    "compare_outputs",
    "float_weight_ops",
    "int8_op_counts",
    "quantization_record",
    "quantize_checked",
    "quantize_onnx",
    "require_agreement",
    "run_onnx",
    "weight_ops",
]

QuantizeMode = Literal["static", "dynamic"]

_KEEP_FLOAT = {"Softmax", "LogSoftmax"}


# ------------------------------------------------------------- quantizing --


def quantize_onnx(
    model: bytes,
    calibration: Feeds | None = None,
    *,
    mode: QuantizeMode = "static",
    per_channel: bool = True,
) -> bytes:
    """The int8 version of the float ONNX ``model``; raises :class:`ModelError` if unfit.

    ``calibration`` holds preprocessed model inputs by name (every input of the
    model, as the runtime receives them); static mode needs it, dynamic mode
    ignores it.  The result is checked: if any Conv/Gemm/MatMul still takes a
    float weight, or the model has none to quantize, this raises instead of
    returning a file that only claims to be int8.
    """
    load_onnx(model, "the float model")
    if not any(op for op in weight_ops(model)):
        raise ModelError(
            "the model has no Conv, Gemm or MatMul with a constant weight, so int8 would "
            "change nothing; package it as float32 (--quantize none)"
        )
    feeds = None
    if mode == "static":
        if calibration is None:
            raise ModelError("static int8 needs calibration samples (or use mode 'dynamic')")
        feeds = calibration_feeds(model, calibration)
    elif mode != "dynamic":
        raise ModelError(f"unknown quantization mode {mode!r}; use 'static' or 'dynamic'")
    with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as tmp:
        src, pre, out = (Path(tmp) / n for n in ("float.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(model)
        try:
            _pre_process(src, pre)
            if feeds is None:
                _quantize_dynamic(pre, out, per_channel)
            else:
                _quantize_static(pre, out, feeds, per_channel)
                _float_outputs(out)
        except ModelError:
            raise
        except Exception as exc:  # the ORT quantizer raises bare Exceptions of many kinds
            raise ModelError(
                f"ONNX Runtime could not quantize the model ({mode}): {exc}; try mode "
                "'dynamic', or ship it as float32"
            ) from exc
        result = out.read_bytes()
    left = float_weight_ops(result)
    if left:
        raise ModelError(
            f"{len(left)} weight op(s) stayed float after {mode} quantization "
            f"({', '.join(left[:3])}); this model cannot be shipped as int8 as it is"
        )
    return result


def _pre_process(src: Path, dst: Path) -> None:
    """ORT's recommended preparation: shape inference and graph fusions (Conv+BN, ...)."""
    from onnxruntime.quantization import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def _quantize_static(
    src: Path, dst: Path, feeds: list[dict[str, npt.NDArray[Any]]], per_channel: bool
) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._feeds: Iterator[dict[str, npt.NDArray[Any]]] = iter(feeds)

        def get_next(self) -> dict[str, npt.NDArray[Any]] | None:
            return next(self._feeds, None)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        reduce_range=True,  # no 16-bit saturation on x86 without VNNI (module docstring)
        op_types_to_quantize=sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - _KEEP_FLOAT),
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )


def _float_outputs(path: Path) -> None:
    """Keep float what the caller reads: a quantize/dequantize pair whose result is a graph
    output or feeds only ops that stay float (softmax) is bypassed.

    Quantizing logits to 256 levels flips the top-1 of rows whose two best classes are
    close, and a regression output would lose all but 8 bits; the op before still runs
    in int8 (ONNX Runtime fuses it with a float output), and its weights stay int8.
    """
    model = onnx.load(str(path))
    graph = model.graph
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def read_as_float(dq: onnx.NodeProto) -> bool:
        users = consumers.get(dq.output[0], [])
        return (dq.output[0] in outputs or bool(users)) and all(
            u.op_type in _KEEP_FLOAT for u in users
        )

    bypass: set[int] = set()
    for q in graph.node:
        if q.op_type != "QuantizeLinear":
            continue
        dqs = [d for d in consumers.get(q.output[0], []) if d.op_type == "DequantizeLinear"]
        bypass.update(id(d) for d in dqs if read_as_float(d))
    if not bypass:
        return
    nodes = []
    for node in graph.node:
        if id(node) in bypass:
            source = next(q for q in graph.node if q.output[0] == node.input[0]).input[0]
            node = helper.make_node("Identity", [source], list(node.output), name=node.name)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input} | outputs
    kept = [n for n in graph.node if n.op_type != "QuantizeLinear" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input}
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    onnx.save(model, str(path))


def _quantize_dynamic(src: Path, dst: Path, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(src))
    _gemm_to_matmul(proto.graph)
    onnx.save(proto, str(src))
    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=["Conv", "MatMul"],
        per_channel=per_channel,
        reduce_range=True,
        # ConvInteger has CPU kernels for uint8 weights only; MatMulInteger takes either.
        weight_type=QuantType.QUInt8,
    )


def _gemm_to_matmul(graph: onnx.GraphProto) -> None:
    """Rewrite ``Gemm(A, W, C)`` with a constant ``W`` as ``MatMul(A, W') + C``.

    ORT's dynamic quantizer has no Gemm (only MatMul/Conv), and ``quant_pre_process``
    and ``torch.onnx.export`` both write dense layers as Gemm.  ``alpha``/``beta`` and
    ``transB`` are folded into the new constants; a Gemm with ``transA`` or a computed
    weight is left as it is (and reported by the float-weight check if it matters).
    """
    inits = {i.name: i for i in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or attrs.get("transA", 0) or node.input[1] not in inits:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        w = (w.T if attrs.get("transB", 0) else w) * float(attrs.get("alpha", 1.0))
        label = node.name or node.output[0]
        w_name = f"{label}_matmul_weight"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        if len(node.input) < 3 or not node.input[2]:
            nodes.append(helper.make_node("MatMul", [node.input[0], w_name], list(node.output)))
            continue
        bias = node.input[2]
        beta = float(attrs.get("beta", 1.0))
        if beta != 1.0 and bias in inits:
            bias = f"{label}_bias"
            scaled = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32) * beta
            graph.initializer.append(numpy_helper.from_array(scaled, bias))
        elif beta != 1.0:
            nodes.append(node)
            continue
        product = f"{label}_product"
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [product], name=label))
        nodes.append(helper.make_node("Add", [product, bias], list(node.output)))
    del graph.node[:]
    graph.node.extend(nodes)


def quantize_checked(
    float_model: bytes,
    calibration: Feeds,
    *,
    mode: QuantizeMode = "static",
    per_channel: bool = True,
    min_top1: float = DEFAULT_MIN_TOP1,
    top1_outputs: Collection[str] | None = None,
) -> tuple[bytes, Quantization]:
    """Quantize, measure float-vs-int8 agreement on ``calibration``, refuse below
    ``min_top1``: the int8 file and the manifest's record of it, in one call (what a
    packer needs; dynamic mode uses the samples only for the agreement)."""
    int8 = quantize_onnx(float_model, calibration, mode=mode, per_channel=per_channel)
    found = agreement(float_model, int8, calibration, top1_outputs=top1_outputs)
    record = quantization_record(
        int8, require_agreement(found, min_top1), mode=mode, per_channel=per_channel
    )
    return int8, record


def quantization_record(
    int8_model: bytes,
    found: Agreement,
    *,
    mode: QuantizeMode = "static",
    per_channel: bool = True,
) -> Quantization:
    """The manifest's ``quantization`` for an ONNX file this module quantized."""
    static = mode == "static"
    return Quantization(
        dtype="int8",
        method="static-qdq" if static else "dynamic-range",
        calibration_samples=found.samples if static else None,
        per_channel=per_channel,
        int8_ops=int8_op_counts(int8_model),
        agreement=found,
    )
