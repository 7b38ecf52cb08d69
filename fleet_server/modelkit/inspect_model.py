"""What a user's model file says about itself: tensors, dtypes, quantization, ops.

The packer reads names, shapes (symbolic and ``-1`` dimensions become
``None``), dtypes and int8 quantization parameters from the file rather than
asking for them, and refuses a graph the declared runtime cannot run, naming
the op and the runtime version, before anything is packaged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from edgefleet_contract.errors import PackageError

ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | None, ...]
    """``None`` where the file leaves the dimension open (batch, sequence length)."""
    dtype: str
    quantization: tuple[float, int] | None = None


@dataclass(frozen=True)
class ModelInfo:
    runtime: str
    """``onnx`` or ``tflite``."""
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    runtime_version: str
    ops: tuple[str, ...]
    int8: bool
    """Whether the file computes in int8 (TFLite full-integer or dynamic-range)."""
    tflite_method: str | None = None

    def input(self, name: str) -> TensorInfo | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorInfo | None:
        return next((t for t in self.outputs if t.name == name), None)


def sniff_runtime(data: bytes, filename: str) -> str:
    """``onnx`` or ``tflite`` from the file's bytes (its suffix only breaks a tie)."""
    if len(data) >= 8 and data[4:8] == b"TFL3":
        return "tflite"
    if filename.endswith(".tflite"):
        raise PackageError(f"{filename} has no TFLite header: the file is corrupt or truncated")
    return "onnx"


def inspect_model(data: bytes, filename: str) -> ModelInfo:
    runtime = sniff_runtime(data, filename)
    return _inspect_tflite(data, filename) if runtime == "tflite" else _inspect_onnx(data, filename)


# ------------------------------------------------------------------ onnx ----


def _inspect_onnx(data: bytes, filename: str) -> ModelInfo:
    import onnx
    import onnxruntime as ort

    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise PackageError(
            f"{filename} is not a readable ONNX file ({exc}); the file is corrupt or "
            "truncated: export it again"
        ) from exc
    if not model.graph.node:
        raise PackageError(f"{filename} has no graph nodes: not an ONNX model, or truncated")
    version = f"onnxruntime {ort.__version__}"
    ops = check_onnx_ops(model, version)
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise PackageError(f"{version} cannot load {filename}: {exc}") from exc
    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(
        _onnx_tensor(i.name, i.shape, i.type, filename)
        for i in session.get_inputs()
        if i.name not in initializers
    )
    outputs = tuple(_onnx_tensor(o.name, o.shape, o.type, filename) for o in session.get_outputs())
    int8 = any(op in ("QuantizeLinear", "QLinearConv", "QLinearMatMul") for op in ops)
    return ModelInfo("onnx", inputs, outputs, version, tuple(sorted(ops)), int8)


def _onnx_tensor(name: str, shape: Any, kind: str, filename: str) -> TensorInfo:
    dtype = ONNX_DTYPES.get(kind)
    if dtype is None:
        raise PackageError(
            f"tensor {name!r} of {filename} is {kind}; edgefleet serves tensors of "
            f"{', '.join(sorted(set(ONNX_DTYPES.values())))}: for a scikit-learn classifier "
            "export with options={'zipmap': False}"
        )
    dims = tuple(d if isinstance(d, int) and d > 0 else None for d in (shape or []))
    return TensorInfo(name, dims, dtype)


def check_onnx_ops(model: Any, version: str) -> set[str]:
    """Every op of the graph (subgraphs included); raise for one the CPU provider lacks."""
    from onnxruntime.capi import _pybind_state as capi

    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    kernels: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for k in capi.get_all_opkernel_def():
        if k.provider == "CPUExecutionProvider":
            kernels.setdefault((k.domain or "ai.onnx", k.op_name), []).append(k.version_range)
    local = {(f.domain or "ai.onnx", f.name) for f in model.functions}
    seen: set[str] = set()
    for node in _nodes(model.graph):
        domain = node.domain or "ai.onnx"
        seen.add(node.op_type)
        if (domain, node.op_type) in local:
            continue
        opset = opsets.get(domain)
        ranges = kernels.get((domain, node.op_type), [])
        supported = opset is not None and (
            any(lo <= opset <= hi for lo, hi in ranges) or _inlined(node.op_type, opset, domain)
        )
        if not supported:
            where = f"{domain} opset {opset}" if opset is not None else f"domain {domain}"
            known = ", ".join(f"{lo}-{hi if hi < 10_000 else 'latest'}" for lo, hi in ranges)
            raise PackageError(
                f"op {node.op_type} ({where}, node {node.name or '?'!r}) is not implemented by "
                f"{version}'s CPU provider"
                + (f" (it has that op for opsets {known})" if known else "")
                + ": export with another opset, or replace the op"
            )
    return seen


GRAPH_LEVEL_OPS = {"Constant"}
"""Ops ONNX Runtime folds into the graph when it loads it, so they have no kernel."""


def _inlined(op: str, opset: int, domain: str) -> bool:
    """Whether ONNX Runtime can run ``op`` without a kernel: folded at load, or defined by
    the ONNX standard as a function of other ops (which the runtime expands)."""
    if op in GRAPH_LEVEL_OPS and domain == "ai.onnx":
        return True
    import onnx

    try:
        schema = onnx.defs.get_schema(op, opset, "" if domain == "ai.onnx" else domain)
    except Exception:  # onnx raises SchemaError for an op it does not define
        return False
    return bool(
        getattr(schema, "has_function", False)
        or getattr(schema, "has_context_dependent_function", False)
    )


def _nodes(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


# ---------------------------------------------------------------- tflite ----


def _inspect_tflite(data: bytes, filename: str) -> ModelInfo:
    from importlib import metadata

    import numpy as np

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise PackageError(
            "packing a TFLite file needs ai-edge-litert: pip install ai-edge-litert"
        ) from exc
    version = f"ai_edge_litert {metadata.version('ai-edge-litert')}"
    try:
        interpreter = Interpreter(model_content=data)
    except Exception as exc:
        raise PackageError(
            f"{version} cannot read {filename}: {exc}; is the file complete?"
        ) from exc
    try:
        interpreter.allocate_tensors()
    except Exception as exc:  # "Didn't find op for builtin opcode 'X' version 'N'"
        raise PackageError(
            f"{version} cannot run {filename}: {exc}; convert it with ops this runtime has"
        ) from exc
    ops = tuple(sorted({str(op["op_name"]) for op in interpreter._get_ops_details()}))
    inputs = tuple(_tflite_tensor(d) for d in interpreter.get_input_details())
    outputs = tuple(_tflite_tensor(d) for d in interpreter.get_output_details())
    integer_io = any(t.quantization for t in (*inputs, *outputs))
    io = {
        int(d["index"])
        for d in (*interpreter.get_input_details(), *interpreter.get_output_details())
    }
    weights_int8 = any(
        np.dtype(d["dtype"]) == np.int8
        and int(d["index"]) not in io
        and len(d.get("quantization_parameters", {}).get("scales", ())) > 0
        for d in interpreter.get_tensor_details()
    )
    # Integer I/O tensors alone do not make an int8 model (their quantization is kept on
    # the tensor specs either way): what is computed in int8 is the weights.
    method = None if not weights_int8 else ("full-integer" if integer_io else "dynamic-range")
    return ModelInfo("tflite", inputs, outputs, version, ops, weights_int8, method)


def _tflite_tensor(detail: dict[str, Any]) -> TensorInfo:
    import numpy as np

    signature = detail.get("shape_signature", detail["shape"])
    dims = tuple(int(d) if int(d) > 0 else None for d in signature)
    dtype = np.dtype(detail["dtype"]).name
    scale, zero = detail["quantization"]
    quant = (float(scale), int(zero)) if dtype in ("int8", "uint8") and scale > 0 else None
    return TensorInfo(str(detail["name"]), dims, dtype, quant)
