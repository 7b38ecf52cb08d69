"""Real int8 for any ONNX file, and the checks that prove a file is int8.

``quantize_onnx`` takes a float ONNX model as this project's exporter,
``torch.onnx.export``, tf2onnx or skl2onnx write it and returns an int8 one:

* ``static`` (default): QDQ int8 calibrated on the caller's samples.  Weights
  are int8 per output channel, activations int8 per tensor from the ranges the
  samples produce.  Every op type ONNX Runtime's QDQ quantizer knows is
  quantized, Gemm included: ``quant_pre_process`` fuses MatMul+Add into Gemm,
  and a quantizer told only about MatMul used to leave every dense layer float.
  Softmax and the model's outputs stay float, so probabilities and regression
  values keep their precision.
* ``dynamic``: weights int8, activations quantized at run time
  (MatMulInteger/ConvInteger); no calibration data needed.  ONNX Runtime has no
  dynamic Gemm, so constant-weight Gemms are rewritten as MatMul + Add first.

The claim is then checked by inspection, not trusted: :func:`weight_ops`
follows each Conv/Gemm/MatMul weight back through DequantizeLinear and
data-movement ops to the constant that stores it, so a "fake-quantized" file
whose weights are float initializers behind QuantizeLinear/DequantizeLinear
counts as float.  :func:`agreement` measures how far the int8 file's outputs
are from the float file's on the same samples.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefleet_contract.errors import ModelError, PackageError
from edgefleet_contract.package import Agreement, ModelPackage, OutputAgreement

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
    "quantize_onnx",
    "require_agreement",
    "run_onnx",
    "weight_ops",
]

QuantizeMode = Literal["static", "dynamic"]
Feed = Mapping[str, npt.ArrayLike]
Feeds = Feed | Sequence[Feed]
"""Model inputs by name: one mapping of whole arrays (split along the batch axis), or a
sequence of ready-made feeds (one ``session.run`` each, e.g. for fixed-batch models)."""

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
_KEEP_FLOAT = {"Softmax", "LogSoftmax"}
_CALIBRATION_BATCH = 64
DEFAULT_MIN_TOP1 = 0.99
"""Top-1 agreement with the float model below which an int8 file is not shipped."""
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


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
    _load(model, "the float model")
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
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
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


# ------------------------------------------------------------ calibration --


def calibration_feeds(model: bytes, calibration: Feeds) -> list[dict[str, npt.NDArray[Any]]]:
    """``calibration`` as checked feeds for ``model``: every input present, of its dtype
    and fixed dimensions, finite; a mapping of whole arrays is cut into batches."""
    import onnxruntime as ort

    session = _session(model, "the float model", ort)
    specs = {i.name: i for i in session.get_inputs()}
    batches = [calibration] if isinstance(calibration, Mapping) else list(calibration)
    if not batches:
        raise ModelError("no calibration samples: give at least one batch of model inputs")
    feeds: list[dict[str, npt.NDArray[Any]]] = []
    for number, batch in enumerate(batches):
        where = "calibration" if isinstance(calibration, Mapping) else f"calibration feed {number}"
        whole = isinstance(calibration, Mapping)
        checked = {name: _checked_input(specs[name], batch, where, whole) for name in specs}
        extra = sorted(set(batch) - set(specs))
        if extra:
            raise ModelError(
                f"{where} names {extra[0]!r}, which is not an input of the model "
                f"(inputs: {', '.join(specs)})"
            )
        feeds.extend(_split(checked, specs) if whole else [checked])
    return feeds


def _checked_input(spec: Any, batch: Feed, where: str, whole: bool) -> Any:
    """One input's array, of the model's dtype and fixed dimensions (but the first when
    ``whole``: a whole calibration set is cut into batches later)."""
    name = spec.name
    if name not in batch:
        raise ModelError(
            f"{where} has no values for model input {name!r} {spec.type}{spec.shape}; "
            "give every input"
        )
    want = _ORT_DTYPES.get(spec.type)
    try:
        array = np.asarray(batch[name])
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{where}: input {name!r} is not an array: {exc}") from exc
    if want is None:
        raise ModelError(f"model input {name!r} has type {spec.type}, which cannot be calibrated")
    if array.dtype != want:
        if array.dtype.kind != np.dtype(want).kind and not (
            array.dtype.kind in "iu" and np.dtype(want).kind == "f"
        ):
            raise ModelError(
                f"{where}: input {name!r} is {array.dtype}, the model takes {spec.type}; "
                f"convert it (e.g. .astype({np.dtype(want).name}))"
            )
        array = array.astype(want)
    shape = list(spec.shape)
    dims = list(zip(shape, array.shape, strict=False))[1 if whole else 0 :]
    if array.ndim != len(shape) or any(isinstance(d, int) and d != s for d, s in dims):
        raise ModelError(
            f"{where}: input {name!r} has shape {list(array.shape)}, the model takes {shape} "
            "(named dimensions may be any size)"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ModelError(f"{where}: input {name!r} has NaN or infinite values")
    return array


def _split(
    feed: dict[str, npt.NDArray[Any]], specs: Mapping[str, Any]
) -> list[dict[str, npt.NDArray[Any]]]:
    """Whole arrays as calibration batches along the first axis (scalars go to every
    batch), of the model's fixed batch size where it has one (a remainder is dropped)."""
    counts = {n: len(a) for n, a in feed.items() if a.ndim}
    if len(set(counts.values())) > 1:
        raise ModelError(
            "calibration inputs differ in sample count ("
            + ", ".join(f"{n}: {c}" for n, c in counts.items())
            + "); give the same number of samples for every input"
        )
    total = next(iter(counts.values()), 1)
    fixed = {s.shape[0] for s in specs.values() if s.shape and isinstance(s.shape[0], int)}
    step = next(iter(fixed)) if len(fixed) == 1 else _CALIBRATION_BATCH
    if total == 0:
        raise ModelError("calibration arrays are empty: give at least one sample")
    stop = total
    if len(fixed) == 1:
        if total < step:
            raise ModelError(f"the model takes batches of {step}; give at least {step} samples")
        stop = total - total % step
    return [
        {n: a[i : i + step] if a.ndim else a for n, a in feed.items()} for i in range(0, stop, step)
    ]


# ---------------------------------------------------------------- checking --


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
    proto = _load(model, "the model")
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


# --------------------------------------------------------------- agreement --


def agreement(
    float_model: bytes,
    int8_model: bytes,
    samples: Feeds,
    *,
    top1_outputs: Collection[str] | None = None,
) -> Agreement:
    """How closely ``int8_model`` reproduces ``float_model`` on ``samples``, every output."""
    feeds = calibration_feeds(float_model, samples)
    return compare_outputs(
        run_onnx(float_model, feeds), run_onnx(int8_model, feeds), top1_outputs=top1_outputs
    )


def require_agreement(found: Agreement, min_top1: float) -> Agreement:
    """``found`` with ``min_top1`` recorded; raises :class:`ModelError` below it.

    An agreement without classification-like outputs has no top-1 to hold to a
    threshold and comes back unchanged (its errors are recorded all the same).
    """
    top1 = found.top1
    if top1 is None:
        return found
    if top1 < min_top1:
        worst = min((o for o in found.outputs if o.top1 is not None), key=lambda o: o.top1 or 0)
        raise ModelError(
            f"the int8 model's output {worst.name!r} agrees with the float model on the top-1 "
            f"class for only {top1:.1%} of {found.samples} calibration samples (need "
            f"{min_top1:.1%}); calibrate on more representative samples, or ship float32"
        )
    return Agreement.model_validate({**found.model_dump(), "min_top1": min_top1})


def run_onnx(model: bytes, samples: Feeds) -> dict[str, npt.NDArray[Any]]:
    """Every output of ``model`` on ``samples`` (batches concatenated), on the CPU provider."""
    import onnxruntime as ort

    session = _session(model, "the model", ort)
    feeds = calibration_feeds(model, samples)
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[npt.NDArray[Any]]] = {n: [] for n in names}
    for feed in feeds:
        try:
            outputs = session.run(names, feed)
        except Exception as exc:  # ORT raises its own exception types
            raise ModelError(f"the model failed on the samples: {exc}") from exc
        for name, value in zip(names, outputs, strict=True):
            parts[name].append(np.asarray(value))
    return {n: _concat(p) for n, p in parts.items()}


def compare_outputs(
    reference: Mapping[str, npt.ArrayLike],
    candidate: Mapping[str, npt.ArrayLike],
    *,
    top1_outputs: Collection[str] | None = None,
) -> Agreement:
    """Agreement of ``candidate`` outputs with ``reference`` ones, output by output.

    Top-1 agreement is computed for the outputs named in ``top1_outputs``, or by
    default for classification-like ones (float ``(batch, classes)`` with more than
    one class); every output gets its max and mean absolute error.  NaN or
    infinite values are refused: a model that produces them on its own
    calibration set is not fit to ship.
    """
    if sorted(reference) != sorted(candidate):
        raise ModelError(f"the models' outputs differ: {sorted(reference)} vs {sorted(candidate)}")
    outputs = []
    samples = 0
    for name in reference:
        ref = np.asarray(reference[name])
        got = np.asarray(candidate[name])
        if ref.shape != got.shape:
            raise ModelError(f"output {name!r} has shape {got.shape}, expected {ref.shape}")
        for label, array in (("float", ref), ("int8", got)):
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise ModelError(
                    f"the {label} model's output {name!r} has NaN or infinite values on the "
                    "calibration samples; check the model and the preprocessing"
                )
        diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
        top1 = None
        classes = ref.ndim == 2 and ref.shape[1] > 1
        if classes and (
            name in top1_outputs if top1_outputs is not None else ref.dtype.kind == "f"
        ):
            top1 = float((ref.argmax(axis=1) == got.argmax(axis=1)).mean())
        samples = max(samples, len(ref) if ref.ndim else 1)
        outputs.append(
            OutputAgreement(
                name=name,
                top1=top1,
                max_abs_error=_finite(diff.max()) if diff.size else 0.0,
                mean_abs_error=_finite(diff.mean()) if diff.size else 0.0,
            )
        )
    return Agreement(samples=max(samples, 1), outputs=outputs)


def _finite(value: Any) -> float:
    number = float(value)
    return number if math.isfinite(number) else float(np.finfo(np.float32).max)


def _concat(parts: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    if len(parts) == 1 or parts[0].ndim == 0:
        return parts[0] if len(parts) == 1 else np.stack(parts)
    return np.concatenate(parts)


# ------------------------------------------------------------------ helpers --


def _load(model: bytes, what: str) -> onnx.ModelProto:
    try:
        return onnx.load_model_from_string(model)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelError(f"{what} is not a readable ONNX file: {exc}") from exc


def _session(model: bytes, what: str, ort: Any) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types for unloadable graphs
        raise ModelError(f"ONNX Runtime cannot load {what}: {exc}") from exc
