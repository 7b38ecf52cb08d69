"""``fleetctl models pack``: turn a user's ONNX or TFLite file into a model package.

Offline and I/O-light: read the file, learn its tensors from it
(:mod:`.inspect_model`), take what it cannot say from the options and the
spec file (:mod:`.packspec`), load the calibration samples, run the model on
them (:mod:`.packrun`) for the self-test vectors, output shapes, drift
reference and anomaly threshold, then verify the package exactly as a device
would (:class:`agent.runtime.Model`: hashes, manifest, self-test on this
runtime) before writing it atomically.  Any refusal leaves no file behind.

In Python::

    from fleet_server.modelkit.pack import PackRequest, pack
    package = pack(PackRequest(model=Path("cnn.onnx"), name="cnn", version="1.0.0",
                               calibration=Path("calib.npz"), output=Path("cnn.efpkg")))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from edgefleet_contract import safezip
from edgefleet_contract.drift import build_reference
from edgefleet_contract.errors import ModelError, PackageError
from edgefleet_contract.multivariate import PCA_NAME, build_pca, pca_json
from edgefleet_contract.package import (
    BACKBONE_NAME,
    MAX_PACKAGE_BYTES,
    SUFFIX,
    Lineage,
    Manifest,
    ModelPackage,
    Quantization,
    SelfTest,
    TensorQuantization,
    TensorSpec,
    encode_weights,
    pack_package,
    parse_package,
)
from edgefleet_contract.preprocess import drift_view
from edgefleet_contract.task import InputRole

from . import headsplit, packrun, quantize
from .calibration import load_calibration
from .inspect_model import ModelInfo, TensorInfo, inspect_model
from .packspec import InputSpec, PackSpec, load_spec
from .packtask import build_task, default_labels, read_labels

MAX_MODEL_BYTES = MAX_PACKAGE_BYTES - 16 * 1024 * 1024
"""A model file must leave room in the package for its manifest."""
FLOAT_TOL = (1e-4, 1e-4)
INT8_TOL = (0.05, 0.05)
Progress = Callable[[str], None]


@dataclass
class PackRequest:
    model: Path
    name: str | None = None
    version: str | None = None
    task: str | None = None
    labels: Path | None = None
    calibration: Path | None = None
    quantize: str | None = None
    output: Path | None = None
    spec: Path | None = None
    embedding: str | None = None
    """The tensor to split the graph at: the dense layers after it become a trainable head."""
    max_bytes: int = MAX_MODEL_BYTES
    created_at: float | None = None
    lineage: Lineage = field(default_factory=lambda: Lineage(source="pack"))


def pack(request: PackRequest, progress: Progress = lambda _: None) -> tuple[ModelPackage, Path]:
    """Pack, verify and write; raise :class:`PackageError` naming the fix (and write nothing).

    The package goes to ``request.output``, by default ``NAME-VERSION-FLAVOR.efpkg``
    beside the model file; returns it as read back and where it went.
    """
    spec = load_spec(request.spec)
    name = request.name or spec.name
    version = request.version or spec.version
    if not name or not version:
        raise PackageError(
            "give the package a --name and a --version (or name/version in the spec)"
        )
    progress(f"reading {request.model.name}")
    data = _read_model(request.model, request.max_bytes)
    info = inspect_model(data, request.model.name)
    _check_spec_names(info, spec)
    roles = [_role(t, spec.inputs.get(t.name)) for t in info.inputs]
    inputs = {t.name: _input_tensor(t, spec.inputs.get(t.name)) for t in info.inputs}
    mode = request.quantize or spec.quantize.mode
    _check_quantize(info, mode)
    embedding = request.embedding or spec.embedding
    split = _split(info, data, mode, embedding) if embedding else None
    if request.calibration is None:
        raise PackageError(
            "give --calibration samples (.npy/.npz/.csv or a folder of images): the self-test "
            "and drift reference are computed by running the model on them"
        )
    progress(f"loading calibration samples from {request.calibration.name}")
    data_roles = [(r, inputs[r.name]) for r in roles if r.role == "data"]
    samples = load_calibration(request.calibration, data_roles, limit=spec.calibration_samples)
    progress(f"running {request.model.name} on {len(next(iter(samples.values())))} samples")
    quant_out = {t.name: t.quantization for t in info.outputs}
    names = [t.name for t in info.outputs]

    def run_on(model: bytes) -> packrun.Run:
        session = packrun.Session(info.runtime, model, names)
        return packrun.run_calibration(session, roles, inputs, quant_out, samples)

    run = run_on(data)
    batched = any(inputs[r.name].batched for r, _ in data_roles)
    outputs = [_output_tensor(t, run, batched, spec) for t in info.outputs]
    labels = read_labels(request.labels, spec.labels)
    kind = request.task or spec.task.kind or ("classification" if labels else "tensors")
    task = build_task(kind, spec.task, roles, outputs, run, labels)
    model_bytes, quantization = data, _file_quantization(info, data)
    if mode == "int8" and info.runtime == "onnx":
        progress(f"quantizing to int8 (static QDQ) on {len(run.feeds)} calibration batches")
        model_bytes, quantization = _int8(data, run, task, spec)
        run = run_on(model_bytes)
        task = build_task(kind, spec.task, roles, outputs, run, labels)
    labels = labels or default_labels(task, outputs)
    progress("computing the self-test vectors and the drift reference")
    manifest = _manifest(
        name, version, info, quantization, inputs, outputs, task, labels, run, samples, spec,
        request,
    )  # fmt: skip
    files = {manifest.model_file: model_bytes}
    pca = build_pca(_drift_rows(task, samples))
    if pca is not None:
        files[PCA_NAME] = pca_json(pca)
    if split is not None and embedding is not None:
        manifest, files = _with_head(manifest, files, split, embedding)
    try:
        package_bytes = pack_package(manifest, files)
    except PackageError as exc:
        raise PackageError(f"{request.model.name}: {exc}") from exc
    package = parse_package(package_bytes)
    progress("verifying the package as a device would (self-test on this runtime)")
    _verify_on_device_path(package)
    m = package.manifest
    target = request.output or request.model.with_name(f"{m.name}-{m.version}-{m.flavor}{SUFFIX}")
    safezip.write_atomically(target, package_bytes)
    return package, target


def _read_model(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise PackageError(f"cannot read {path}: {exc}") from exc
    if size > max_bytes:
        raise PackageError(
            f"{path.name} is {size} bytes, over the {max_bytes} byte limit of a model file; "
            "quantize it or split it"
        )
    if size == 0:
        raise PackageError(f"{path.name} is empty")
    return path.read_bytes()


def _check_spec_names(info: ModelInfo, spec: PackSpec) -> None:
    for where, names, known in (
        ("inputs", spec.inputs, info.inputs),
        ("outputs", spec.outputs, info.outputs),
    ):
        have = [t.name for t in known]
        for n in names:
            if n not in have:
                raise PackageError(
                    f"the spec file names {where[:-1]} {n!r}, which the model does not have; "
                    f"its {where} are {have}"
                )
    outs = [t.name for t in info.outputs]
    for named in [spec.task.output, spec.task.boxes, spec.task.classes]:
        if named is not None and named not in outs:
            raise PackageError(
                f"the spec's task names output {named!r}; the model's outputs are {outs}"
            )


def _role(t: TensorInfo, s: InputSpec | None) -> InputRole:
    s = s or InputSpec()
    drift = s.drift or ("channels" if s.preprocessing.image else "values")
    if s.role != "data":
        drift = "none"
    try:
        return InputRole(
            name=t.name,
            role=s.role,
            preprocessing=s.preprocessing,
            state_from=s.state_from,
            initial=s.initial,
            value=s.value,
            drift=drift,
        )
    except ValidationError as exc:
        raise PackageError(f"input {t.name!r}: {safezip.first_error(exc)}") from exc


def _input_tensor(t: TensorInfo, s: InputSpec | None) -> TensorSpec:
    shape = _pinned(t, s.shape if s else None, "inputs")
    return _tensor(t, shape)


def _pinned(t: TensorInfo, pin: list[int] | None, where: str) -> list[int]:
    if pin is not None:
        if len(pin) != len(t.shape) or any(
            d is not None and p != d for p, d in zip(pin, t.shape, strict=False)
        ):
            raise PackageError(
                f"the spec pins {t.name!r} to {pin}, but the model says {list(t.shape)} "
                "(None = open): keep the fixed dimensions"
            )
        return pin
    shape = [-1 if d is None and i == 0 else d for i, d in enumerate(t.shape)]
    if any(d is None for d in shape):
        raise PackageError(
            f"{t.name!r} has open dimensions {list(t.shape)} past the batch: pin them in the "
            f"spec file, e.g. [{where}.{t.name}] shape = {[1 if d is None else d for d in t.shape]}"
        )
    return [int(d) for d in shape if d is not None]


def _tensor(t: TensorInfo, shape: list[int]) -> TensorSpec:
    q = t.quantization
    try:
        return TensorSpec(
            name=t.name,
            shape=shape,
            dtype=t.dtype,  # type: ignore[arg-type]
            quantization=TensorQuantization(scale=q[0], zero_point=q[1]) if q else None,
        )
    except ValidationError as exc:
        raise PackageError(f"tensor {t.name!r}: {safezip.first_error(exc)}") from exc


def _output_tensor(t: TensorInfo, run: packrun.Run, batched: bool, spec: PackSpec) -> TensorSpec:
    pin = spec.outputs.get(t.name)
    if pin is not None and pin.shape is not None:
        return _tensor(t, pin.shape)
    seen = [tuple(o[t.name].shape) for o in run.outputs]
    return _tensor(t, packrun.output_shape(t.shape, seen, t.name, batched))


def _check_quantize(info: ModelInfo, mode: str) -> None:
    if info.runtime == "tflite" and mode == "int8" and not info.int8:
        raise PackageError(
            "--quantize int8 does not apply to TFLite files: they are packed as the "
            "converter wrote them; convert with full-integer or dynamic-range quantization"
        )
    if info.runtime == "onnx" and mode == "int8" and info.int8:
        raise PackageError(
            "the ONNX file is quantized already; pack it with --quantize none, or give "
            "the float model to quantize"
        )


def _split(info: ModelInfo, data: bytes, mode: str, embedding: str) -> headsplit.HeadSplit:
    if info.runtime != "onnx":
        raise PackageError("--embedding splits ONNX models only; this is a TFLite file")
    if mode == "int8":
        raise PackageError(
            "--embedding packs the float model (the head trains in float); leave out "
            "--quantize int8: a federated candidate is built in float and int8"
        )
    return headsplit.split_head(data, embedding)


def _with_head(
    manifest: Manifest, files: dict[str, bytes], split: headsplit.HeadSplit, embedding: str
) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and members of a package whose head after ``embedding`` trains."""
    trainable = split.network.trainable.model_copy(
        update={"embedding": embedding, "backbone_file": BACKBONE_NAME}
    )
    members = {
        **files,
        BACKBONE_NAME: split.backbone,
        trainable.file: encode_weights(split.network.weights),
    }
    return manifest.model_copy(update={"trainable": trainable}), members


def _file_quantization(info: ModelInfo, data: bytes) -> Quantization:
    """What the file is as given: float, or int8 as its converter or quantizer wrote it
    (an ONNX one must hold int8 weights for every Conv/Gemm/MatMul: the registry checks)."""
    if info.runtime == "tflite" and info.tflite_method is not None:
        return Quantization(dtype="int8", method=info.tflite_method)  # type: ignore[arg-type]
    if info.runtime == "onnx" and info.int8:
        left = quantize.float_weight_ops(data)
        if left:
            raise PackageError(
                f"the ONNX file has quantize ops but {len(left)} weight op(s) with float "
                f"weights ({', '.join(left[:3])}): give the float model and --quantize int8"
            )
        ops = quantize.int8_op_counts(data)
        return Quantization(dtype="int8", method="static-qdq", int8_ops=ops)
    return Quantization(dtype="float32", method="none")


def _int8(data: bytes, run: packrun.Run, task: Any, spec: PackSpec) -> tuple[bytes, Quantization]:
    """Static QDQ int8 calibrated on the run's own feeds, refused below the agreement."""
    top1 = [task.output] if getattr(task, "kind", "") == "classification" else []
    try:
        return quantize.quantize_checked(
            data,
            run.feeds,
            mode="static",
            per_channel=spec.quantize.per_channel,
            min_top1=spec.quantize.min_agreement,
            top1_outputs=top1,
        )
    except ModelError as exc:
        raise PackageError(f"int8 quantization: {exc}") from exc


def _manifest(
    name: str,
    version: str,
    info: ModelInfo,
    quantization: Quantization,
    inputs: dict[str, TensorSpec],
    outputs: list[TensorSpec],
    task: Any,
    labels: list[str],
    run: packrun.Run,
    samples: dict[str, Any],
    spec: PackSpec,
    request: PackRequest,
) -> Manifest:
    fed = [r.name for r in task.inputs if r.role != "constant"]
    picks = _self_test_picks(task, run, spec.self_test.size)
    rows_in, rows_out = packrun.self_test_rows(run, picks, fed, [o.name for o in outputs])
    atol, rtol = INT8_TOL if quantization.dtype == "int8" else FLOAT_TOL
    views = _drift_rows(task, samples)
    try:
        return Manifest(
            format=2,
            name=name,
            version=version,
            runtime=info.runtime,  # type: ignore[arg-type]
            quantization=quantization,
            flavor=f"{info.runtime}-{quantization.dtype}",  # type: ignore[arg-type]
            model_file=f"model.{info.runtime}",
            inputs=[inputs[t.name] for t in info.inputs],
            outputs=outputs,
            task=task,
            labels=labels,
            self_test=SelfTest(
                inputs=rows_in,
                expected=rows_out,
                atol=spec.self_test.atol or atol,
                rtol=spec.self_test.rtol if spec.self_test.rtol is not None else rtol,
                min_top1_agreement=1.0 if quantization.dtype == "float32" else 0.9,
            ),
            drift=build_reference(views),
            lineage=request.lineage,
            created_at=time.time() if request.created_at is None else request.created_at,
        )
    except (ValidationError, ModelError) as exc:
        detail = safezip.first_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise PackageError(f"{request.model.name}: {detail}") from exc


def _drift_rows(task: Any, samples: dict[str, Any]) -> npt.NDArray[np.float32]:
    """The sample rows as the device's drift tests see them (every data input's view)."""
    views = [
        drift_view(samples[r.name], r.preprocessing, r.drift)
        for r in task.data_inputs
        if r.drift != "none"
    ]
    if not views:
        raise PackageError(
            "at least one data input needs a drift reference (drift = 'none' on all)"
        )
    return np.concatenate(views, axis=1)


def _self_test_picks(task: Any, run: packrun.Run, size: int) -> list[int]:
    if getattr(task, "kind", "") == "classification" and not task.multi_label:
        from edgefleet_contract.interpret import class_scores

        from .build import pick_self_test_rows

        p = np.concatenate([class_scores(task, o) for o in run.outputs])
        return pick_self_test_rows(p, size)
    return packrun.spread(len(run.outputs), size)


def _verify_on_device_path(package: ModelPackage) -> None:
    from agent.runtime import Model

    try:
        Model.from_package(package)
    except ModelError as exc:
        raise PackageError(f"the packed model does not pass the device's checks: {exc}") from exc
