"""A loaded, self-tested model: the one object the daemon and local apps predict with.

``Model.load`` verifies the package (hashes, manifest), opens the runtime the
manifest names, runs the self-test vectors through the same ``predict`` path
apps use and warms the batch-of-one shape.  After that ``predict`` does only
what it must per call: validate the batch, preprocess, run, pick the top-1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet_contract.errors import InputRejected, ModelError
from edgefleet_contract.messages import ModelRef
from edgefleet_contract.package import (
    MAX_PACKAGE_BYTES,
    Manifest,
    ModelPackage,
    TensorSpec,
    read_package,
)

from .backends import Backend, open_backend
from .selftest import check_self_test

MAX_BATCH = 4096
"""Rows per ``predict`` call; the local API has its own, usually smaller, limit."""
_INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}


@dataclass(frozen=True, slots=True)
class Prediction:
    """Outputs for a batch: one row of probabilities and one top-1 per input row."""

    probabilities: npt.NDArray[np.float32]
    classes: npt.NDArray[np.intp]
    confidence: npt.NDArray[np.float32]
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, slots=True)
class SelfTestResult:
    max_error: float
    top1_agreement: float
    vectors: int


class Model:
    """Construct with :meth:`load` or :meth:`from_package`; safe to share between threads."""

    def __init__(self, package: ModelPackage, backend: Backend) -> None:
        self.package = package
        self.manifest: Manifest = package.manifest
        self.ref: ModelRef = package.ref
        self.backend = backend.name
        self._run = backend.run
        spec, out = self.manifest.inputs[0], self.manifest.outputs[0]
        self.features = spec.features
        self._labels = tuple(self.manifest.labels)
        pre = self.manifest.preprocessing
        self._scale = np.asarray(pre.scale, dtype=np.float32)
        self._offset = np.asarray(pre.offset, dtype=np.float32)
        self._identity = pre.scale == 1.0 and pre.offset == 0.0
        self._input_shape = tuple(spec.shape[1:])
        self._quantize = _quantizer(spec)
        self._dequantize = _dequantizer(out)
        self.self_test = self._run_self_test()
        self.predict(np.asarray(self.manifest.self_test.inputs[:1], dtype=np.float32))  # warm-up

    @classmethod
    def load(cls, path: Path, *, threads: int = 1, max_bytes: int = MAX_PACKAGE_BYTES) -> Model:
        """Read, verify and self-test the package at ``path``."""
        return cls.from_package(read_package(Path(path), max_bytes=max_bytes), threads=threads)

    @classmethod
    def from_package(cls, package: ModelPackage, *, threads: int = 1) -> Model:
        return cls(package, open_backend(package.manifest, package.model_bytes, threads=threads))

    def __repr__(self) -> str:
        m = self.manifest
        return f"<Model {m.name} {m.version} {m.flavor} on {self.backend}>"

    def predict(self, batch: npt.ArrayLike) -> Prediction:
        """Predict raw feature rows ``(n, features)`` (or one row ``(features,)``).

        Raises :class:`InputRejected` (a :class:`ModelError`) for input a caller
        got wrong (shape, type, NaN); its message says what was expected.
        """
        x = self._prepare(batch)
        out = self._run(x)
        probabilities = self._dequantize(out) if self._dequantize else out
        classes = probabilities.argmax(axis=1)
        labels = self._labels
        return Prediction(
            probabilities,
            classes,
            probabilities.max(axis=1),
            tuple([labels[i] for i in classes.tolist()]),
        )

    def _prepare(self, batch: npt.ArrayLike) -> npt.NDArray[Any]:
        try:
            x = np.asarray(batch)
        except (ValueError, TypeError) as exc:
            raise InputRejected(f"input is not a numeric array: {exc}") from exc
        if x.dtype.kind not in "fiub":
            raise InputRejected(f"input must be numbers, got dtype {x.dtype}")
        if x.ndim == 1:
            x = x.reshape(1, -1)
        elif x.ndim > 2:
            x = x.reshape(x.shape[0], -1)
        n, width = x.shape
        if width != self.features or not 1 <= n <= MAX_BATCH:
            raise InputRejected(
                f"input has shape {tuple(np.shape(batch))}; {self.manifest.name} expects "
                f"(rows, {self.features}) with 1 to {MAX_BATCH} rows"
            )
        if x.dtype != np.float32:
            with np.errstate(over="ignore"):  # out-of-range values become inf, refused below
                x = x.astype(np.float32)
        if not self._identity:
            x = x * self._scale + self._offset
        if not np.isfinite(x).all():
            raise InputRejected("input has NaN or infinite values")
        if len(self._input_shape) > 1:
            x = x.reshape(n, *self._input_shape)
        return self._quantize(x) if self._quantize else x

    def _run_self_test(self) -> SelfTestResult:
        spec = self.manifest.self_test
        m = self.manifest
        subject = f"{m.name} {m.version} ({m.flavor}) on {self.backend}"
        try:
            outputs = self.predict(np.asarray(spec.inputs, dtype=np.float32)).probabilities
        except ModelError as exc:
            raise ModelError(f"{subject}: the self-test could not run: {exc}") from exc
        error, agreement = check_self_test(spec, outputs, subject=subject)
        return SelfTestResult(error, agreement, len(spec.inputs))


def _quantizer(spec: TensorSpec) -> Any:
    """Maps float rows onto an int8/uint8 input tensor, or None for float inputs."""
    q = spec.quantization
    if q is None:
        return None
    lo, hi = _INT_RANGE[spec.dtype]
    dtype = np.int8 if spec.dtype == "int8" else np.uint8
    inverse, zero = np.float32(1.0 / q.scale), np.float32(q.zero_point)

    def quantize(x: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        return np.asarray(np.clip(np.rint(x * inverse) + zero, lo, hi), dtype=dtype)

    return quantize


def _dequantizer(spec: TensorSpec) -> Any:
    """Maps an int8/uint8 output tensor back to float probabilities, or None."""
    q = spec.quantization
    if q is None:
        return None
    scale, zero = np.float32(q.scale), np.float32(q.zero_point)

    def dequantize(out: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        return (out.astype(np.float32) - zero) * scale

    return dequantize
