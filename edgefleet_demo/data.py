"""The demo's data: a factory model, each device's field inputs, and the input shift.

The shipped ``digits`` package in ``fleet_server/factory_models`` was trained on the whole
training split (held-out accuracy ~0.97), so no federated run over that same
data could honestly beat it.  The demo therefore tells the usual field story:
the **factory model** is the same 64-32-10 architecture trained (seeded,
deterministically) on a small "lab" sample, quantized to int8 and shipped to
the devices; the devices then see the rest of the training split, non-IID
(each class spread over devices by a Dirichlet draw), label a fraction of it
through the feedback API, and learn from it federatedly.  The held-out split
(``modelkit.digits.split().test``) never reaches a device; the run evaluates
on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgefleet_contract.errors import ModelError
from edgefleet_contract.package import Lineage

MODEL = "digits-demo"
FACTORY_VERSION = "1.0.0"
LAB_SAMPLES = 60
"""Rows the factory model is trained on: few enough that field data clearly helps."""
LAB_EPOCHS = 40


@dataclass(frozen=True)
class DeviceData:
    """One device's field inputs (raw 0..16 pixel rows) and their true labels."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]


def factory_packages(directory: Path) -> dict[str, Path]:
    """Build (once) the factory model's float and int8 ONNX packages in ``directory``.

    The architecture is the shipped ``digits`` package's; the weights are fresh
    (He-initialised, seeded) and trained by the same numpy SGD the devices run.
    """
    from agent.learning.trainer import LocalConfig, Mlp, train
    from edgefleet_contract.package import read_package
    from fleet_server.factory_models import DIST
    from fleet_server.modelkit import Network
    from fleet_server.modelkit.build import build_package
    from fleet_server.modelkit.digits import LABELS, PREPROCESSING, split

    paths = {
        flavor: directory / f"{MODEL}-{FACTORY_VERSION}-{flavor}.efpkg"
        for flavor in ("onnx-float32", "onnx-int8")
    }
    if all(p.exists() for p in paths.values()):
        return paths
    shipped = read_package(DIST / "digits-1.0.0-onnx-float32.efpkg")
    if shipped.manifest.trainable is None:
        raise ModelError("the shipped digits package carries no trainable weights")
    base = Network.from_package(shipped)
    rng = np.random.default_rng(7)
    start = {
        name: (
            rng.standard_normal(w.shape) * np.sqrt(2 / w.shape[0])
            if w.ndim == 2
            else np.zeros_like(w)
        ).astype(np.float32)
        for name, w in base.weights.items()
    }
    data = split()
    lab = np.random.default_rng(3).permutation(len(data.y_train))[:LAB_SAMPLES]
    trained = train(
        Mlp(shipped.manifest.trainable),
        start,
        PREPROCESSING.apply(data.x_train[lab]),
        data.y_train[lab].astype(np.int64),
        LocalConfig(epochs=LAB_EPOCHS, lr=0.05, batch_size=16, seed=7),
    )
    network = Network(base.input_shape, base.layers, trained.weights)
    directory.mkdir(parents=True, exist_ok=True)
    for flavor, path in paths.items():
        blob = build_package(
            network,
            name=MODEL,
            version=FACTORY_VERSION,
            flavor=flavor,  # type: ignore[arg-type]
            preprocessing=PREPROCESSING,
            labels=LABELS,
            reference=data.x_train,
            lineage=Lineage(source="build", run_id="demo-factory"),
            created_at=0.0,
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        tmp.replace(path)
    return paths


def device_data(devices: int, *, alpha: float = 0.5, seed: int = 11) -> list[DeviceData]:
    """The training split cut non-IID over ``devices`` (Dirichlet(alpha) per class)."""
    from fleet_server.modelkit.digits import split
    from fleet_server.modelkit.partition import dirichlet_parts

    data = split()
    parts = dirichlet_parts(data.y_train, devices, alpha, seed)
    return [
        DeviceData(data.x_train[p].astype(np.float32), data.y_train[p].astype(np.int64))
        for p in parts
    ]


def shifted(x: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """A camera that got brighter and noisier: +4 on every pixel, Gaussian noise, clipped."""
    out = x + 4.0 + rng.normal(0.0, 2.0, size=x.shape)
    return np.clip(out, 0.0, 16.0).astype(np.float32)
