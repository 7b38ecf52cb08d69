"""The model package: one zip file the server builds and signs and the agent runs.

A package holds ``manifest.json`` plus the files it lists (the runtime model
and, for trainable models, ``weights.npz`` with the float weights).  Each listed
file carries its SHA-256 and size; the package's own SHA-256 (of the whole file)
is the identity a device reports in :class:`~edgefleet_contract.messages.ModelRef`.

Packages arrive from uploads and over the air, so reading one assumes a hostile
file: sizes are checked against limits before anything is decompressed, member
names are flat (no directories, so nothing can point outside the package), the
member count is bounded, nothing is unpickled, and every byte is hashed against
the manifest before a runtime sees it (the zip-level checks are
:mod:`~edgefleet_contract.safezip`'s, shared with firmware bundles).
:func:`parse_package` is the I/O-free core; :func:`read_package` and
:func:`write_package` are the disk edges.
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from . import safezip
from . import task as tasks
from .drift import DriftReference
from .errors import PackageError
from .messages import ModelRef, Sha256, Timestamp
from .preprocess import Preprocessing as Preprocessing
from .preprocess import drift_view, raw_shape
from .safezip import MANIFEST_NAME as MANIFEST_NAME  # part of the format's public surface
from .task import Task

FORMAT_VERSION: Literal[2] = 2
"""The format this code writes for packages with a ``task`` section."""
FORMATS_READ = (1, 2)
"""Format 1 (single-input softmax classifiers, no task) is still read and still written
for them, so devices running an older agent keep taking the reference models."""
WEIGHTS_NAME = "weights.npz"
BACKBONE_NAME = "backbone.onnx"
SUFFIX = ".efpkg"

MAX_PACKAGE_BYTES = 128 * 1024 * 1024
"""Default limit on the package file (and on everything it unpacks to)."""
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
MAX_MEMBERS = 16
_KIND = safezip.ArchiveKind(noun="package", title="model package")

SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)

PackageName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
SemVer = Annotated[str, StringConstraints(pattern=SEMVER_PATTERN, max_length=64)]
Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
Label = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Runtime = Literal["onnx", "tflite"]
Dim = Annotated[int, Field(ge=-1, le=1_000_000)]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class TensorQuantization(_Closed):
    """Affine int8/uint8 mapping of a runtime tensor: ``real = scale * (q - zero_point)``."""

    scale: Annotated[float, Field(gt=0)]
    zero_point: Annotated[int, Field(ge=-128, le=255)]


class TensorSpec(_Closed):
    """One runtime input or output; ``-1`` in ``shape`` is the batch dimension."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    shape: Annotated[list[Dim], Field(max_length=8)]
    dtype: Literal["float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool"]
    quantization: TensorQuantization | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TensorSpec:
        if any(d == 0 for d in self.shape) or -1 in self.shape[1:]:
            raise ValueError("only the first (batch) dimension may be -1, and none may be 0")
        if (self.dtype in ("int8", "uint8")) != (self.quantization is not None):
            raise ValueError("int8/uint8 tensors need quantization parameters; others none")
        return self

    @property
    def batched(self) -> bool:
        return bool(self.shape) and self.shape[0] == -1

    @property
    def features(self) -> int:
        """Values per sample (the product of the non-batch dimensions)."""
        return math.prod(self.shape[1:] if self.batched else self.shape)

    @property
    def quant_params(self) -> tuple[float, int] | None:
        q = self.quantization
        return None if q is None else (q.scale, q.zero_point)


Share = Annotated[float, Field(ge=0, le=1)]
Error = Annotated[float, Field(ge=0)]


class OutputAgreement(_Closed):
    """How one output of the int8 model compares with the float model's on the same rows."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    top1: Share | None = None
    """Share of rows with the same top-1 class (classification-like outputs only)."""
    max_abs_error: Error
    mean_abs_error: Error


class Agreement(_Closed):
    """Float-vs-int8 agreement measured by the builder on the calibration samples."""

    samples: Annotated[int, Field(ge=1)]
    outputs: Annotated[list[OutputAgreement], Field(min_length=1, max_length=64)]
    min_top1: Share | None = None
    """The threshold the builder refused to ship below, if it checked top-1."""

    @property
    def top1(self) -> float | None:
        """The worst top-1 agreement over the classification-like outputs, if any."""
        shares = [o.top1 for o in self.outputs if o.top1 is not None]
        return min(shares) if shares else None

    @model_validator(mode="after")
    def _consistent(self) -> Agreement:
        top1 = self.top1
        if self.min_top1 is not None and (top1 is None or top1 < self.min_top1):
            raise ValueError(f"top-1 agreement {top1} is below the declared {self.min_top1}")
        return self


QuantMethod = Literal["none", "dynamic-range", "static-qdq", "full-integer"]
OpType = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{1,64}$")]
OpCount = Annotated[int, Field(ge=1)]


class Quantization(_Closed):
    """What the model file's numbers are, and for int8 the facts the builder checked.

    ``int8_ops`` and ``agreement`` came with real quantization; packages written
    before carry neither and still load (the registry re-inspects ONNX files).
    """

    dtype: Literal["float32", "int8"]
    method: QuantMethod
    calibration_samples: Annotated[int, Field(ge=1)] | None = None
    per_channel: bool | None = None
    int8_ops: Annotated[dict[OpType, OpCount], Field(max_length=16)] | None = None
    """Conv/Gemm/MatMul ops whose weights are stored int8, by op type: ``{"Conv": 4, ...}``."""
    agreement: Agreement | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Quantization:
        if (self.dtype == "float32") != (self.method == "none"):
            raise ValueError("float32 models use method 'none'; int8 models name their method")
        if self.dtype == "float32" and (self.int8_ops or self.agreement or self.per_channel):
            raise ValueError("float32 models record no int8 ops, agreement or per_channel")
        return self


class SelfTest(_Closed):
    """Vectors the device must reproduce on its own runtime before it serves a model.

    ``inputs`` are raw features (before preprocessing); ``expected`` are the
    output probabilities the builder's runtime produced for this very file.
    """

    inputs: Annotated[list[list[float]], Field(min_length=1, max_length=1024)]
    """Format 2: each row is one call's data and state inputs, raw and flattened, in the
    order of ``task.inputs`` (constants are not repeated)."""
    expected: Annotated[list[list[float]], Field(min_length=1, max_length=1024)]
    """Format 2: each row is every output of that call, flattened, in manifest order."""
    atol: Annotated[float, Field(gt=0, le=1)]
    """Largest absolute difference allowed on any probability (format 2: any value,
    plus ``rtol`` times its magnitude)."""
    rtol: Annotated[float, Field(ge=0, le=1)] = 0.0
    min_top1_agreement: Annotated[float, Field(ge=0, le=1)] = 1.0
    """Share of vectors whose top-1 class must match the expected one."""

    @model_validator(mode="after")
    def _consistent(self) -> SelfTest:
        if len(self.inputs) != len(self.expected):
            raise ValueError("self_test needs exactly one expected row per input row")
        return self


class ParamSpec(_Closed):
    name: Ident
    shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=8)]


class LayerSpec(_Closed):
    """One layer of the float network the trainable weights belong to.

    Conventions: dense weights are ``(in, out)``; conv2d weights are
    ``(kh, kw, in_channels, out_channels)`` with 'same' padding and stride 1 on
    NHWC images; flatten is in NHWC order; maxpool2d uses ``size`` as both
    window and stride; upsample2d repeats each pixel ``size`` times along
    height and width (nearest neighbour).
    """

    kind: Literal["dense", "conv2d", "maxpool2d", "upsample2d", "flatten"]
    weight: Ident | None = None
    bias: Ident | None = None
    activation: Literal["none", "relu", "softmax"] = "none"
    size: Annotated[int, Field(ge=1, le=64)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> LayerSpec:
        has_params = self.kind in ("dense", "conv2d")
        if has_params != (self.weight is not None and self.bias is not None):
            raise ValueError(f"a {self.kind} layer {'needs' if has_params else 'has no'} params")
        if (self.kind in ("maxpool2d", "upsample2d")) != (self.size is not None):
            raise ValueError("'size' is set exactly on maxpool2d and upsample2d layers")
        return self


class Trainable(_Closed):
    """How the float weights in ``weights.npz`` map onto the model."""

    file: safezip.MemberName = WEIGHTS_NAME
    input_shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=4)]
    """One sample after preprocessing: ``[features]`` or an image ``[h, w, c]``."""
    layers: Annotated[list[LayerSpec], Field(min_length=1, max_length=64)]
    params: Annotated[list[ParamSpec], Field(min_length=1, max_length=128)]
    embedding: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    """Format 2: the tensor of the user's graph the trainable head reads.  The graph up to
    it ships as ``backbone_file`` (frozen, run by the device's runtime); the dense layers
    after it are these ``layers``, trained in numpy on the backbone's output."""
    backbone_file: safezip.MemberName | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Trainable:
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError("parameter names must be unique")
        used = [n for layer in self.layers for n in (layer.weight, layer.bias) if n]
        if sorted(used) != sorted(names):
            raise ValueError("the layers must use every listed parameter exactly once")
        if (self.embedding is None) != (self.backbone_file is None):
            raise ValueError("embedding and backbone_file are declared together")
        return self


class Lineage(_Closed):
    source: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    """Where the weights came from: "build", "upload", "federated", ..."""
    run_id: Ident | None = None
    parent: Annotated[str, StringConstraints(max_length=128)] | None = None
    """The ``name@version`` this one was derived from, if any."""


class FileEntry(_Closed):
    path: safezip.MemberName
    sha256: Sha256
    size: Annotated[int, Field(ge=0)]


class Manifest(_Closed):
    format: Literal[1, 2] = 1
    name: PackageName
    version: SemVer
    runtime: Runtime
    quantization: Quantization
    flavor: Literal["onnx-float32", "onnx-int8", "tflite-float32", "tflite-int8"]
    model_file: safezip.MemberName
    inputs: Annotated[list[TensorSpec], Field(min_length=1, max_length=16)]
    outputs: Annotated[list[TensorSpec], Field(min_length=1, max_length=16)]
    preprocessing: Preprocessing = Preprocessing()
    """Format 1 only (scale and offset); format 2 declares it per input in ``task``."""
    task: Task | None = None
    """Format 2 only: what the tensors mean (see :mod:`edgefleet_contract.task`)."""
    labels: Annotated[list[Label], Field(max_length=10_000)] = []
    self_test: SelfTest
    drift: DriftReference
    trainable: Trainable | None = None
    lineage: Lineage
    created_at: Timestamp
    files: Annotated[list[FileEntry], Field(max_length=MAX_MEMBERS - 1)] = []
    """Filled in by :func:`write_package`; a package read back always lists its model file."""

    @model_validator(mode="before")
    @classmethod
    def _known_task(cls, doc: Any) -> Any:
        if isinstance(doc, dict):
            tasks.refuse_unknown(doc.get("task"))
        return doc

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.flavor != flavor_of(self.runtime, self.quantization.dtype):
            raise ValueError(f"flavor must be {flavor_of(self.runtime, self.quantization.dtype)!r}")
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths) or MANIFEST_NAME in paths:
            raise ValueError("files must be listed once each, and never manifest.json")
        if self.format == 1:
            self._check_format1()
        else:
            self._check_format2()
        return self

    def _check_format1(self) -> None:
        if self.task is not None:
            raise ValueError("a task section needs format 2")
        if len(self.inputs) != 1 or len(self.outputs) != 1 or len(self.labels) < 2:
            raise ValueError("format 1 has one input, one output and at least two labels")
        extra = self.preprocessing.model_dump(exclude={"scale", "offset"}, exclude_defaults=True)
        if extra:
            raise ValueError(f"format 1 preprocessing is scale and offset, not {sorted(extra)}")
        features, classes = self.inputs[0].features, self.outputs[0].features
        if len(self.labels) != classes:
            raise ValueError(f"{len(self.labels)} labels for an output of {classes} classes")
        for name in ("scale", "offset"):
            value = getattr(self.preprocessing, name)
            if isinstance(value, list) and len(value) != features:
                raise ValueError(f"preprocessing.{name} has {len(value)} values, need {features}")
        if any(len(row) != features for row in self.self_test.inputs):
            raise ValueError(f"every self_test input row needs {features} values")
        if any(len(row) != classes for row in self.self_test.expected):
            raise ValueError(f"every self_test expected row needs {classes} values")
        if len(self.drift.features) != features:
            raise ValueError(f"the drift reference must describe {features} features")
        if self.trainable and math.prod(self.trainable.input_shape) != features:
            raise ValueError("trainable.input_shape does not hold the input's feature count")
        if self.trainable and self.trainable.embedding is not None:
            raise ValueError("a trainable head over an embedding needs format 2")

    def _check_format2(self) -> None:
        # the task rules, kept beside their schema
        from .manifest_checks import check_head, check_task

        if self.task is None:
            raise ValueError("format 2 needs a task section")
        if not self.preprocessing.is_identity:
            raise ValueError("format 2 declares preprocessing per input, in task.inputs")
        if self.trainable is not None:
            check_head(self)
        check_task(self)

    @property
    def features(self) -> int:
        return self.inputs[0].features

    def input_spec(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output_spec(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)


def as_task(manifest: Manifest) -> Task:
    """The manifest's task; a format-1 package reads as a softmax classifier of its input."""
    if manifest.task is not None:
        return manifest.task
    return tasks.Classification(
        kind="classification",
        inputs=[
            tasks.InputRole(name=manifest.inputs[0].name, preprocessing=manifest.preprocessing)
        ],
        output=manifest.outputs[0].name,
    )


def drift_width(manifest: Manifest) -> int:
    """How many features the drift reference of ``manifest`` must describe."""
    task = as_task(manifest)
    width = 0
    for role in task.data_inputs:
        if role.drift == "none":
            continue
        spec = manifest.input_spec(role.name)
        shape = raw_shape(role.preprocessing, spec.shape)
        probe = np.zeros((1, *shape), dtype=np.float32)
        width += drift_view(probe, role.preprocessing, role.drift).shape[1]
    return width


def flavor_of(runtime: str, dtype: str) -> str:
    return f"{runtime}-{dtype}"


@dataclass(frozen=True)
class ModelPackage:
    """A verified package in memory: every member matched its manifest entry."""

    manifest: Manifest
    sha256: str
    size: int
    members: Mapping[str, bytes] = field(repr=False)

    @property
    def ref(self) -> ModelRef:
        m = self.manifest
        return ModelRef(name=m.name, version=m.version, sha256=self.sha256, runtime=m.runtime)

    @property
    def model_bytes(self) -> bytes:
        return self.members[self.manifest.model_file]

    def weights(self) -> dict[str, npt.NDArray[np.float32]]:
        """The trainable float weights, checked against the manifest's parameter shapes."""
        trainable = self.manifest.trainable
        if trainable is None:
            raise PackageError(f"{self.manifest.name} {self.manifest.version} is not trainable")
        return decode_weights(self.members[trainable.file], trainable)


# ---------------------------------------------------------------- reading ----


def read_package(path: Path, *, max_bytes: int = MAX_PACKAGE_BYTES) -> ModelPackage:
    """Read and verify the package at ``path``; raise :class:`PackageError` if it is unfit."""
    parse = partial(parse_package, max_bytes=max_bytes)
    return safezip.read_verified(path, parse, max_bytes=max_bytes, kind=_KIND)


def parse_package(data: bytes, *, max_bytes: int = MAX_PACKAGE_BYTES) -> ModelPackage:
    """Verify a package held in memory (the same checks as :func:`read_package`)."""
    with safezip.open_zip(data, max_bytes=max_bytes, kind=_KIND) as zipped:
        count = len(zipped.infolist())
        if count > MAX_MEMBERS:
            raise PackageError(f"{count} members; a package holds at most {MAX_MEMBERS}")
        members = safezip.unpack(
            zipped, max_bytes=max_bytes, limits={MANIFEST_NAME: MAX_MANIFEST_BYTES}
        )
    manifest_bytes = members.pop(MANIFEST_NAME, None)
    if manifest_bytes is None:
        raise PackageError(f"the package has no {MANIFEST_NAME}")
    manifest = safezip.load_manifest(
        manifest_bytes, Manifest, format_version=FORMATS_READ, kind=_KIND
    )
    _verify_members(manifest, members)
    return ModelPackage(
        manifest=manifest, sha256=hashlib.sha256(data).hexdigest(), size=len(data), members=members
    )


def _verify_members(manifest: Manifest, members: Mapping[str, bytes]) -> None:
    listed = {f.path: f for f in manifest.files}
    trainable = manifest.trainable
    paths = [manifest.model_file, *([trainable.file, trainable.backbone_file] if trainable else [])]
    for path in paths:
        if path is not None and path not in listed:
            raise PackageError(f"{MANIFEST_NAME} does not list {path} in files")
    extra = sorted(set(members) - set(listed))
    if extra:
        raise PackageError(f"member {extra[0]} is not listed in {MANIFEST_NAME}")
    for entry in manifest.files:
        content = members.get(entry.path)
        if content is None:
            raise PackageError(f"{entry.path} is listed in {MANIFEST_NAME} but missing")
        if len(content) != entry.size:
            raise PackageError(f"{entry.path} has {len(content)} bytes, manifest says {entry.size}")
        if hashlib.sha256(content).hexdigest() != entry.sha256:
            raise PackageError(f"{entry.path} does not match its SHA-256 in {MANIFEST_NAME}")
    if manifest.trainable is not None:
        decode_weights(members[manifest.trainable.file], manifest.trainable)


# ---------------------------------------------------------------- weights ----


def encode_weights(weights: Mapping[str, npt.ArrayLike]) -> bytes:
    """An ``.npz`` of stored float32 arrays with fixed timestamps (same weights, same bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(weights):
            array = np.ascontiguousarray(weights[name], dtype=np.float32)
            if not np.isfinite(array).all():
                raise PackageError(f"weight {name} has NaN or infinite values")
            npy = io.BytesIO()
            np.lib.format.write_array(npy, array, allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", safezip.ZIP_EPOCH), npy.getvalue())
    return buffer.getvalue()


def decode_weights(raw: bytes, trainable: Trainable) -> dict[str, npt.NDArray[np.float32]]:
    """Load ``weights.npz`` and check it holds exactly the listed float32 params.

    The ``.npz`` is opened as a plain zip so every member's size is bounded by
    its parameter's shape before it is inflated, and arrays are parsed with
    pickle disabled.
    """
    where = trainable.file
    expected = {f"{p.name}.npy": p for p in trainable.params}
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise PackageError(f"{where} is not a readable .npz file: {exc}") from exc
    out: dict[str, npt.NDArray[np.float32]] = {}
    with archive:
        for info in archive.infolist():
            param = expected.get(info.filename)
            if param is None or param.name in out:
                raise PackageError(f"{where} holds {info.filename[:80]!r}, not a listed param")
            limit = 4 * math.prod(param.shape) + 4096  # data + the .npy header
            if info.file_size > limit:
                raise PackageError(f"{where}: {param.name} is larger than its shape allows")
            try:
                with archive.open(info) as stream:
                    blob = stream.read(limit + 1)
                array = np.lib.format.read_array(io.BytesIO(blob), allow_pickle=False)
            except Exception as exc:  # hostile bytes surface as many exception types
                raise PackageError(f"{where}: {param.name} is unreadable: {exc}") from exc
            if list(array.shape) != param.shape or array.dtype != np.float32:
                raise PackageError(
                    f"{where}: {param.name} is {array.dtype}{list(array.shape)}, "
                    f"manifest says float32{param.shape}"
                )
            if not np.isfinite(array).all():
                raise PackageError(f"{where}: {param.name} has NaN or infinite values")
            out[param.name] = array
    missing = [p.name for p in trainable.params if p.name not in out]
    if missing:
        raise PackageError(f"{where} has no array {missing[0]}")
    return out


# ---------------------------------------------------------------- writing ----


def pack_package(manifest: Manifest, files: Mapping[str, bytes]) -> bytes:
    """The package bytes for ``manifest`` and its ``files`` (``files`` entries are computed).

    Every member is stored, not deflated, so that the package diffs well: a deflate
    stream turns one changed byte into a different stream from there on, which left a
    bsdiff patch for a retrained head as big as the package itself.  Stored, a patch
    carries little more than the changed weights and the manifest's changed fields.
    The members come in name order and the manifest, whose length changes with every
    version, last, so the stable members keep their offsets from one version to the
    next.  The manifest is compact JSON: about half the bytes of an indented one.
    """
    entries = [
        FileEntry(path=name, sha256=hashlib.sha256(content).hexdigest(), size=len(content))
        for name, content in sorted(files.items())
    ]
    try:
        final = Manifest.model_validate({**manifest.model_dump(), "files": entries})
    except ValidationError as exc:
        raise PackageError(f"cannot write the package: {safezip.first_error(exc)}") from exc
    _verify_members(final, files)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for entry in entries:
            archive.writestr(zipfile.ZipInfo(entry.path, safezip.ZIP_EPOCH), files[entry.path])
        doc = manifest_json(final)
        archive.writestr(zipfile.ZipInfo(MANIFEST_NAME, safezip.ZIP_EPOCH), doc)
    return buffer.getvalue()


def manifest_json(manifest: Manifest) -> bytes:
    """The manifest as written; a format-1 one has exactly the fields format 1 always had,
    so an agent that predates format 2 still reads the reference packages."""
    if manifest.format == 1:
        legacy: Any = {"task": True, "self_test": {"rtol"}}
        return manifest.model_dump_json(exclude=legacy).encode()
    return manifest.model_dump_json().encode()


def write_package(path: Path, manifest: Manifest, files: Mapping[str, bytes]) -> ModelPackage:
    """Write a package atomically (temp file + rename) and return it as read back."""
    data = pack_package(manifest, files)
    package = parse_package(data, max_bytes=max(MAX_PACKAGE_BYTES, len(data)))
    safezip.write_atomically(path, data)
    return package
