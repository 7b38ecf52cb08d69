"""From a finished run's weights to candidate packages, judged against their parent.

Every flavour (ONNX/TFLite, float/int8) is built by :mod:`fleet_server.modelkit`
(fresh self-test vectors and drift reference included), the float ONNX file is
scored on held-out rows the devices never saw, and only a candidate that beats
the package it started from is handed to ``on_candidate(path, lineage)`` (the
registry's ``add_model`` at integration).  Files land in
``{data_dir}/candidates/{run_id}/`` either way, for inspection.  When the
devices judge instead (federated acceptance, :mod:`.fedeval`), their verdict
decides and the server's held-out figures, if any, are only reported.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet_contract import scoring
from edgefleet_contract.errors import FederationError, ModelError
from edgefleet_contract.package import Lineage, ModelPackage, parse_package

from ..modelkit.build import FLAVORS, build_package, run_model
from ..modelkit.headpackage import head_packages
from ..modelkit.network import Network
from ..store.training import RoundRecord
from .release import RELEASE_KEY, for_participants
from .spec import RunSpec

log = logging.getLogger(__name__)

CandidateHook = Callable[[Path, dict[str, object]], object]


@dataclass(frozen=True)
class HeldOutSet:
    x_raw: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    reference_raw: npt.NDArray[np.float32]
    """Training-distribution rows for the drift reference and int8 calibration."""


HeldOut = Callable[[str], HeldOutSet]


def digits_heldout(model: str) -> HeldOutSet:
    """The reference data set's held-out split (what the reference models were judged on)."""
    from ..modelkit.digits import split

    data = split()
    return HeldOutSet(data.x_test, data.y_test, data.x_train)


def heldout_for(directory: Path) -> HeldOut:
    """A model's held-out set: ``{directory}/{model}.npz`` where the operator put one
    (arrays ``x``: raw samples as the model is asked about them, ``y``: their labels,
    optional ``reference``: training-like samples for calibration, else ``x``); the
    reference digits split otherwise.  A user's own model needs its own."""

    def load(model: str) -> HeldOutSet:
        path = directory / f"{model}.npz"
        if not path.is_file():
            return digits_heldout(model)
        with np.load(path, allow_pickle=False) as doc:
            if "x" not in doc.files or "y" not in doc.files:
                raise FederationError(f"{path} needs arrays 'x' (samples) and 'y' (labels)")
            x = np.asarray(doc["x"], np.float32)
            reference = doc["reference"] if "reference" in doc.files else x
            return HeldOutSet(x, np.asarray(doc["y"], np.int64), np.asarray(reference, np.float32))

    return load


def accuracy(network: Network, data: HeldOutSet, package: ModelPackage) -> float | None:
    """Accuracy on the server's held-out rows; None when it holds no labelled rows."""
    if not len(data.y):
        return None
    x = heldout_rows(package, data.x_raw)
    return scoring.accuracy(network.forward(x), data.y)


def has_head(package: ModelPackage) -> bool:
    """Whether the package's trainable part is a head over its graph's embedding."""
    trainable = package.manifest.trainable
    return trainable is not None and trainable.embedding is not None


def heldout_rows(package: ModelPackage, x_raw: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Held-out rows as the trainable network reads them: preprocessed features, or for a
    head over an embedding, the frozen backbone's output (the same code the device runs)."""
    if has_head(package):
        from agent.learning.backbone import Backbone

        return Backbone(package)(x_raw)
    return package.manifest.preprocessing.apply(x_raw)


def _served_accuracy(package: ModelPackage, data: HeldOutSet) -> float | None:
    """Top-1 accuracy of the package as a device serves it (its whole graph); None when
    the server holds no labelled rows."""
    from agent.runtime import Model

    if not len(data.y):
        return None

    classes = Model.from_package(package).predict(data.x_raw).classes
    return float((classes == data.y).mean())


def _build(
    parent: ModelPackage, network: Network, version: str, lineage: Lineage, data: HeldOutSet
) -> dict[str, bytes]:
    """Every flavour's package bytes, the float ONNX one first."""
    manifest = parent.manifest
    if has_head(parent):
        return head_packages(
            parent,
            network.weights,
            version=version,
            lineage=lineage,
            calibration_raw=data.reference_raw,
        )
    out: dict[str, bytes] = {}
    for flavor in FLAVORS:
        try:
            out[flavor] = build_package(
                network,
                name=manifest.name,
                version=version,
                flavor=flavor,
                preprocessing=manifest.preprocessing,
                labels=manifest.labels,
                reference=data.reference_raw,
                lineage=lineage,
            )
        except ModelError as exc:
            if not flavor.endswith("-int8"):
                raise
            # An int8 file that disagrees with the float one is not shipped (what the
            # packer tells a person to do); the float flavours still make the candidate.
            log.warning("%s %s: no %s package: %s", manifest.name, version, flavor, exc)
    return out


def next_version(version: str, taken: Iterable[str] = ()) -> str:
    """The next minor version after ``version`` and after every candidate already built."""
    from ..versions import parse_version, version_key

    newest = max([version, *taken], key=version_key)
    parsed = parse_version(newest) or parse_version(newest.split("-")[0].split("+")[0])
    major, minor = (*parsed.release, 0, 0)[:2] if parsed else (0, 0)
    return f"{major}.{minor + 1}.0"


def built_versions(candidates: Path, name: str) -> list[str]:
    """Versions of ``name`` already built by earlier runs (so two runs never share one)."""
    prefix, suffix = f"{name}-", "-onnx-float32.efpkg"
    versions = [p.name[len(prefix) : -len(suffix)] for p in candidates.glob(f"*/{prefix}*{suffix}")]
    return [v for v in versions if re.fullmatch(r"\d+\.\d+\.\d+", v)]


def finish_run(
    run_id: str,
    spec: RunSpec,
    parent: ModelPackage,
    network: Network,
    heldout: HeldOut,
    *,
    rounds: list[RoundRecord],
    out_dir: Path,
    on_candidate: CandidateHook | None,
    build: bool = True,
    federated: dict[str, Any] | None = None,
) -> dict[str, object]:
    """Build and judge the candidate; ``federated`` (a :func:`.fedeval.verdict`) replaces the
    server's held-out comparison as what decides whether it is handed over."""
    data = heldout(spec.model)
    manifest = parent.manifest
    baseline = (
        _served_accuracy(parent, data)
        if has_head(parent)
        else accuracy(Network.from_package(parent), data, parent)
    )
    participants = sorted({d for r in rounds for d in r.participants})
    version = next_version(manifest.version, built_versions(out_dir.parent, manifest.name))
    result: dict[str, object] = {
        "baseline_accuracy": baseline,
        "parent": f"{manifest.name}@{manifest.version}",
        "version": version,
        "participants": participants,
        "rounds": len(rounds),
    }
    if federated is not None:
        result["federated_acceptance"] = federated
    if not build:
        result["accuracy"] = accuracy(network, data, parent)
        return result
    out_dir.mkdir(parents=True, exist_ok=True)
    lineage = Lineage(
        source="federated", run_id=run_id, parent=f"{manifest.name}@{manifest.version}"
    )
    files: list[Path] = []
    for flavor, blob in _build(parent, network, version, lineage, data).items():
        path = out_dir / f"{manifest.name}-{version}-{flavor}.efpkg"
        path.write_bytes(blob)
        files.append(path)
    candidate_acc = built_accuracy(files[0], data)
    if federated is not None:
        beats, why = bool(federated["accepted"]), str(federated["reason"])
    else:
        beats = candidate_acc is not None and baseline is not None and candidate_acc > baseline
        why = f"held-out accuracy {candidate_acc} vs parent {baseline}"
    result.update(
        accuracy=candidate_acc, beats_parent=beats, files=[str(p) for p in files], handed_over=False
    )
    if not beats:
        result["refused"] = f"candidate not registered: {why}"
    if beats and on_candidate is not None:
        release = for_participants(spec.release, participants)
        info: dict[str, object] = {
            "source": "federated",
            "run_id": run_id,
            "parent": f"{manifest.name}@{manifest.version}",
            "rounds": len(rounds),
            "participants": participants,
            "strategy": spec.strategy,
            "heldout_accuracy": candidate_acc,
            "parent_accuracy": baseline,
            "rollout": spec.rollout,
            RELEASE_KEY: None if release is None else release.model_dump(mode="json"),
            "target": spec.target,
            "parent_flavor": manifest.flavor,
        }
        if federated is not None:
            info["federated_acceptance"] = federated
        for path in files:
            on_candidate(path, info)
        result["handed_over"] = True
    log.info("run %s candidate %s: %s (handed over: %s)", run_id, version, why, beats)
    return result


def built_accuracy(path: Path, data: HeldOutSet) -> float | None:
    """The built float ONNX file's accuracy on the server's held-out rows (None: no rows)."""
    if not len(data.y):
        return None
    built = parse_package(path.read_bytes())
    if has_head(built):
        return _served_accuracy(built, data)
    x = built.manifest.preprocessing.apply(data.x_raw)
    produced = run_model("onnx", built.members[built.manifest.model_file], x)
    return scoring.accuracy(produced, data.y)
