"""Turn a float :class:`Network` into a verified model package of any flavour.

This is the one path from weights to a shippable file, used by the reference
build (``python -m models.build``) and by federated training for candidates.
Every file is checked before it is packaged: the exported model runs on the
builder's own runtime and must match the numpy reference (float flavours) or
agree with it on the top-1 class (int8 flavours, whose agreement is recorded in the
manifest and whose ONNX weights are checked to really be int8).  The self-test vectors then
record what this file produced here, so a device whose runtime disagrees
refuses the package instead of serving silently wrong answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from edgefleet_contract.drift import build_reference
from edgefleet_contract.errors import ModelError
from edgefleet_contract.multivariate import PCA_NAME, build_pca, pca_json
from edgefleet_contract.package import (
    WEIGHTS_NAME,
    Agreement,
    Lineage,
    Manifest,
    Preprocessing,
    Quantization,
    SelfTest,
    TensorSpec,
    encode_weights,
    pack_package,
    parse_package,
)

from ..cbpe import CALIBRATION_NAME, calibrate
from . import onnx_export, quantize, tflite_export
from .network import Network

Flavor = Literal["onnx-float32", "onnx-int8", "tflite-float32", "tflite-int8"]
FLAVORS: tuple[Flavor, ...] = ("onnx-float32", "onnx-int8", "tflite-float32", "tflite-int8")

FLOAT_ATOL = 1e-4
"""Float files must reproduce the numpy reference (and the device the builder) this closely."""
INT8_ATOL = 0.05
"""Probabilities from int8 kernels legitimately differ across CPUs by a few hundredths."""
INT8_SELF_TEST_AGREEMENT = 0.9
SELF_TEST_CONFIDENCE = 0.9
"""Self-test vectors come from rows the model gives at least this top-1 probability."""
SELF_TEST_DECIMALS = 6
"""Expected self-test probabilities are recorded to this many decimals (well inside FLOAT_ATOL)."""


def build_package(
    network: Network,
    *,
    name: str,
    version: str,
    flavor: Flavor,
    preprocessing: Preprocessing,
    labels: Sequence[str],
    reference: npt.ArrayLike,
    lineage: Lineage,
    trainable: bool = True,
    self_test_size: int = 30,
    created_at: float | None = None,
    min_agreement: float = quantize.DEFAULT_MIN_TOP1,
    calibration: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
) -> bytes:
    """Export, check and package ``network``; returns the package bytes.

    ``reference`` holds raw (unpreprocessed) training rows: the drift reference
    is computed on them, int8 flavours are calibrated and checked on them, and
    the self-test vectors are drawn from them (evenly across predicted classes).
    An int8 flavour whose top-1 agrees with the float network on fewer than
    ``min_agreement`` of those rows is refused.
    ``calibration`` is a labelled set the network did not train on (raw rows,
    labels): how often the exported model is right per confidence bin goes into
    the package as ``calibration.json``, for the server's label-free estimate.
    """
    raw = np.asarray(reference, dtype=np.float32)
    if raw.ndim != 2 or raw.shape[1] != network.features or len(raw) < 2:
        raise ModelError(f"reference rows must be (n >= 2, {network.features}), got {raw.shape}")
    runtime, dtype = flavor.split("-")
    x = preprocessing.apply(raw)
    expected_float = network.forward(x)
    model = _export(network, runtime, dtype == "int8", x)
    produced = run_model(runtime, model, x)
    agreement = _check_export(flavor, produced, expected_float, min_agreement)
    picks = pick_self_test_rows(produced, self_test_size)
    files = {f"model.{runtime}": model}
    if trainable:
        files[WEIGHTS_NAME] = encode_weights(network.weights)
    pca = build_pca(raw)
    if pca is not None:
        files[PCA_NAME] = pca_json(pca)
    if calibration is not None:
        cx = preprocessing.apply(np.asarray(calibration[0], dtype=np.float32))
        probs = run_model(runtime, model, cx)
        right = probs.argmax(axis=1) == np.asarray(calibration[1])
        table = calibrate(probs.max(axis=1), right).to_json()
        files[CALIBRATION_NAME] = json.dumps(table, sort_keys=True).encode()
    manifest = Manifest(
        name=name,
        version=version,
        runtime=runtime,  # type: ignore[arg-type]
        quantization=_quantization(runtime, model, agreement),
        flavor=flavor,
        model_file=f"model.{runtime}",
        inputs=[
            TensorSpec(name=onnx_export.INPUT_NAME, shape=[-1, network.features], dtype="float32")
        ],
        outputs=[
            TensorSpec(name=onnx_export.OUTPUT_NAME, shape=[-1, network.classes], dtype="float32")
        ],
        preprocessing=preprocessing,
        labels=list(labels),
        self_test=SelfTest(
            inputs=raw[picks].tolist(),
            expected=[[_rounded(v) for v in row] for row in produced[picks]],
            atol=FLOAT_ATOL if dtype == "float32" else INT8_ATOL,
            min_top1_agreement=1.0 if dtype == "float32" else INT8_SELF_TEST_AGREEMENT,
        ),
        drift=build_reference(raw),
        trainable=network.trainable if trainable else None,
        lineage=lineage,
        created_at=time.time() if created_at is None else created_at,
    )
    data = pack_package(manifest, files)
    parse_package(data)  # what we ship must read back
    return data


def _rounded(value: np.float32) -> float:
    """A self-test probability to ``SELF_TEST_DECIMALS``: at most 5e-7 off, 200 times inside
    the tightest tolerance, and a few characters of JSON instead of 17 digits of noise, which
    keeps the manifest (and a delta between two versions of it) small."""
    return round(float(value), SELF_TEST_DECIMALS)


def run_model(runtime: str, model: bytes, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Outputs of ``model`` on this machine's runtime (the builder's ground truth)."""
    if runtime == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {onnx_export.INPUT_NAME: x})[0], dtype=np.float32)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return np.array(out, dtype=np.float32)


def _export(network: Network, runtime: str, int8: bool, x: npt.NDArray[np.float32]) -> bytes:
    if runtime == "onnx":
        model = onnx_export.to_onnx(network)
        return quantize.quantize_onnx(model, {onnx_export.INPUT_NAME: x}) if int8 else model
    return tflite_export.to_tflite(network, int8_weights=int8)


def _check_export(
    flavor: str,
    produced: npt.NDArray[np.float32],
    expected: npt.NDArray[np.float32],
    min_agreement: float,
) -> Agreement | None:
    """Float files must match the network; int8 ones agree with it on enough top-1s."""
    if flavor.endswith("float32"):
        err = float(np.abs(produced - expected).max())
        if err > FLOAT_ATOL:
            raise ModelError(f"{flavor} export differs from the float network by {err:.2e}")
        return None
    name = onnx_export.OUTPUT_NAME
    try:
        found = quantize.compare_outputs({name: expected}, {name: produced})
        return quantize.require_agreement(found, min_agreement)
    except ModelError as exc:
        raise ModelError(f"{flavor} export: {exc}") from exc


def _quantization(runtime: str, model: bytes, agreement: Agreement | None) -> Quantization:
    """The manifest's record of what the file's numbers are and what was checked."""
    if agreement is None:
        return Quantization(dtype="float32", method="none")
    if runtime == "onnx":
        return quantize.quantization_record(model, agreement)
    return Quantization(dtype="int8", method="dynamic-range", per_channel=True, agreement=agreement)


def pick_self_test_rows(probabilities: npt.NDArray[np.float32], count: int) -> list[int]:
    """Round-robin over predicted classes, so every class is exercised, taking the earliest
    reference rows the model is sure of (no vector on a decision boundary where int8 noise
    could flip it).  Earliest, not most confident: a retrained head still classifies the
    same rows confidently, so its package mostly repeats the vectors of the version before
    and a delta between the two stays small.  Classes short of sure rows top up with their
    most confident others."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    queues = []
    for c in np.unique(predicted):
        rows = np.flatnonzero(predicted == c).tolist()
        sure = [i for i in rows if confidence[i] >= SELF_TEST_CONFIDENCE]
        rest = sorted(
            (i for i in rows if confidence[i] < SELF_TEST_CONFIDENCE), key=lambda i: -confidence[i]
        )
        queues.append(sure + rest)
    picks: list[int] = []
    while len(picks) < min(count, len(probabilities)):
        for queue in queues:
            if queue and len(picks) < count:
                picks.append(queue.pop(0))
    return sorted(picks)
