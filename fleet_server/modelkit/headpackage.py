"""A package of the user's own model with a new head: what a federated round over a head makes.

The parent package (packed with ``--embedding``) keeps its graph, backbone,
inputs, task, labels and drift reference; only the head's initializers change
(:func:`~.headsplit.write_head`).  The float flavour carries the new weights
(so the next run continues from it); the int8 flavour is the new graph
quantized with static QDQ on the calibration samples and refused below the
agreement :func:`~.quantize.quantize_checked` demands.  Each flavour's
self-test vectors are the parent's inputs with the new model's outputs, and
the package is verified on the device path before it is returned.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from edgefleet_contract.errors import PackageError
from edgefleet_contract.package import (
    Lineage,
    Manifest,
    ModelPackage,
    encode_weights,
    pack_package,
    parse_package,
)
from edgefleet_contract.preprocess import prepare, raw_shape
from edgefleet_contract.task import Classification

from . import quantize
from .headsplit import write_head

INT8_ATOL = 0.05


def head_packages(
    parent: ModelPackage,
    weights: Mapping[str, npt.ArrayLike],
    *,
    version: str,
    lineage: Lineage,
    calibration_raw: npt.ArrayLike,
    min_agreement: float = 0.97,
) -> dict[str, bytes]:
    """``{flavor: package bytes}`` (float and int8 ONNX) of ``parent`` with head ``weights``."""
    m = parent.manifest
    trainable = m.trainable
    if trainable is None or trainable.embedding is None or not isinstance(m.task, Classification):
        raise PackageError(f"{m.name} {m.version} has no trainable head over an embedding")
    head = {k: np.asarray(weights[k], np.float32) for k in (p.name for p in trainable.params)}
    float_model = write_head(parent.members[m.model_file], trainable.embedding, head)
    base = m.model_copy(update={"version": version, "lineage": lineage, "created_at": time.time()})
    members = dict(parent.members) | {
        m.model_file: float_model,
        trainable.file: encode_weights(head),
    }
    out = {"onnx-float32": _packed(base, members, float_model)}
    feeds = _feeds(m, calibration_raw)
    int8, record = quantize.quantize_checked(
        float_model, feeds, min_top1=min_agreement, top1_outputs=[m.task.output]
    )
    int8_manifest = base.model_copy(
        update={
            "quantization": record,
            "flavor": "onnx-int8",
            "trainable": None,
            "self_test": base.self_test.model_copy(
                update={"atol": INT8_ATOL, "rtol": INT8_ATOL, "min_top1_agreement": 0.9}
            ),
        }
    )
    out["onnx-int8"] = _packed(int8_manifest, {m.model_file: int8}, int8)
    return out


def _feeds(m: Manifest, raw: npt.ArrayLike) -> list[dict[str, npt.NDArray[np.float32]]]:
    """Raw samples as the runtime tensors of the model's one data input, in batches."""
    assert m.task is not None
    role = m.task.data_inputs[0]
    spec = m.input_spec(role.name)
    rows = np.asarray(raw, np.float32).reshape(-1, *raw_shape(role.preprocessing, spec.shape))
    batches = [rows[s : s + 32] for s in range(0, len(rows), 32)]
    return [
        {spec.name: prepare(b, role.preprocessing, shape=spec.shape, dtype=spec.dtype)}
        for b in batches
    ]


def _packed(manifest: Manifest, members: dict[str, bytes], model: bytes) -> bytes:
    """Recompute the self-test outputs on ``model`` (same raw inputs), pack and verify."""
    import onnxruntime as ort  # here, not at import: every server command imports this module

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in manifest.outputs]
    expected = []
    for row in manifest.self_test.inputs:
        values = session.run(names, _feeds(manifest, [row])[0])
        expected.append([round(float(v), 6) for a in values for v in np.asarray(a).reshape(-1)])
    final = manifest.model_copy(
        update={"self_test": manifest.self_test.model_copy(update={"expected": expected})}
    )
    blob = pack_package(final, members)
    _verify(parse_package(blob))
    return blob


def _verify(package: ModelPackage) -> None:
    from agent.runtime import Model

    Model.from_package(package)  # hashes, manifest, self-test: as a device will
