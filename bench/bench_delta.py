"""Delta updates: bytes a device downloads for an update (a bsdiff4 patch, as served by
``GET /tuf/deltas/{from}/{to}``) as a fraction of the full artifact.

Model: the ``digits-cnn`` reference architecture (four 3x3 convolutions + two dense
layers).  v1.0.0 gets a short full training; v1.1.0 differs only in the classifier head
(the last dense layer, retrained on the other half of the training data), as a head-only
fine-tune or a federated round on the head produces.  Both are built by
``fleet_server.modelkit.build_package`` in every flavour.  Baselines in the same run: the
full artifact (ratio 1.0) and a "whole network" update (every layer trained further).
The small ``digits`` MLP (trainable: its package also carries ``weights.npz``) gets the
same head-only update; its package is mostly manifest (drift reference, self-test
vectors; the builder keeps those stable across versions and rounds the expected
probabilities).  Packages store their members uncompressed, so a patch carries little
more than the changed weights and manifest fields; the "deflated" columns repack the
very same two packages with deflated members (what the format did before), where one
changed byte scrambles the rest of the compressed stream, so the patch is about as big
as the package unless every change sits at the very end of its member.  "full growth"
is what storing costs a device that downloads the whole package (stored size / deflated
size); "delta / deflated full" compares the patch with that smaller full download.
Firmware: the shipped sample bundles ``edge-os`` 1.0.0 -> 1.1.0 (image stored).  Every
patch is applied and the result compared with the target byte for byte.  Goal: <= 0.10
of the full artifact for a head-only update."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import bsdiff4
import numpy as np

from edgefleet_contract.package import read_package
from fleet_server.modelkit import FLAVORS, Network
from fleet_server.modelkit.digits import PREPROCESSING, split
from fleet_server.modelkit.network import F32, apply_layer
from models.build import REFERENCES, SEED
from models.train import init_network, train

from ._digits import digits_package

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware_images" / "dist"
CREATED = 1_767_225_600.0


def _features(network: Network, x: F32) -> F32:
    out = x.reshape((-1, *network.input_shape))
    for layer in network.layers[:-1]:
        out = apply_layer(layer, out, network.weights)
    return out


def retrain_head(network: Network, x: F32, y: np.ndarray, *, steps: int, seed: int) -> Network:
    """Softmax regression on the frozen features: only the last dense layer changes."""
    head = network.layers[-1]
    assert head.weight and head.bias
    feats = _features(network, x)
    w, b = network.weights[head.weight].copy(), network.weights[head.bias].copy()
    onehot = np.eye(w.shape[1], dtype=np.float32)[y]
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(feats), size=min(256, len(feats)), replace=False)
        logits = feats[idx] @ w + b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - onehot[idx]) / len(idx)
        w -= 0.2 * (feats[idx].T @ grad)
        b -= 0.2 * grad.sum(axis=0)
    return network.with_weights({**network.weights, head.weight: w, head.bias: b})


def _package(network: Network, name: str, version: str, flavor: str, trainable: bool) -> bytes:
    return digits_package(
        network,
        name=name,
        version=version,
        flavor=flavor,  # type: ignore[arg-type]
        run_id="bench-delta",
        created_at=CREATED,
        trainable=trainable,
    )


def _diff(old: bytes, new: bytes) -> int:
    patch = bsdiff4.diff(old, new)
    assert bsdiff4.patch(old, patch) == new
    return len(patch)


def _row(what: str, old: bytes, new: bytes, *, compare: bool = True) -> dict[str, object]:
    delta = _diff(old, new)
    row: dict[str, object] = {
        "update": what,
        "full bytes": len(new),
        "delta bytes": delta,
        "delta / full": f"{delta / len(new):.3f}",
        "deflated: full bytes": "-",
        "deflated: delta / full": "-",
        "full growth": "-",
        "delta / deflated full": "-",
    }
    if compare:
        old_z, new_z = deflated(old), deflated(new)
        row["deflated: full bytes"] = len(new_z)
        row["deflated: delta / full"] = f"{_diff(old_z, new_z) / len(new_z):.3f}"
        row["full growth"] = f"{len(new) / len(new_z):.2f}x"
        row["delta / deflated full"] = f"{delta / len(new_z):.3f}"
    return row


def deflated(package: bytes) -> bytes:
    """The same package with every member deflated (same order, names and content)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(package)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(
                zipfile.ZipInfo(info.filename, info.date_time), src.read(info), zipfile.ZIP_DEFLATED
            )
    return out.getvalue()


def run() -> list[dict[str, object]]:
    data = split()
    x = PREPROCESSING.apply(data.x_train)
    y = np.asarray(data.y_train)
    half = len(x) // 2
    ref = REFERENCES["digits-cnn"]
    # A short full training gives v1.0.0 real features (and int8 exports that check out).
    base = train(
        init_network(ref.input_shape, ref.layers, ref.widths, seed=SEED),
        x[:600],
        y[:600],
        epochs=1,
        seed=SEED,
    )
    v1 = retrain_head(base, x[:half], y[:half], steps=600, seed=1)
    v11 = retrain_head(v1, x[half:], y[half:], steps=600, seed=2)
    other = train(v1, x[600:1200], y[600:1200], epochs=1, seed=3)
    rows = []
    for flavor in FLAVORS:
        old = _package(v1, "digits-cnn", "1.0.0", flavor, trainable=False)
        new = _package(v11, "digits-cnn", "1.1.0", flavor, trainable=False)
        rows.append(_row(f"digits-cnn {flavor}, head only", old, new))
        if flavor == "onnx-float32":
            rows.append(
                _row(
                    f"digits-cnn {flavor}, whole network (baseline)",
                    old,
                    _package(other, "digits-cnn", "1.1.0", flavor, trainable=False),
                )
            )
    mlp = read_package(ROOT / "fleet_server" / "factory_models" / "digits-1.0.0-onnx-float32.efpkg")
    small = Network.from_package(mlp)
    tuned = retrain_head(small, x[half:], y[half:], steps=600, seed=4)
    for flavor in FLAVORS:
        rows.append(
            _row(
                f"digits (MLP) {flavor}, head only",
                _package(small, "digits", "1.0.0", flavor, True),
                _package(tuned, "digits", "1.1.0", flavor, True),
            )
        )
    rows.append(
        _row(
            "firmware edge-os 1.0.0 -> 1.1.0",
            (FIRMWARE / "edge-os-1.0.0.efbundle").read_bytes(),
            (FIRMWARE / "edge-os-1.1.0.efbundle").read_bytes(),
            compare=False,
        )
    )
    return rows
