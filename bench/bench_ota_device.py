"""Device-side OTA: what verifying an update costs the device, and what a delta saves it.

Verification = a TUF refresh by a fresh ngclient ``Updater`` (root, timestamp, snapshot,
targets, Ed25519 signatures, the way the device does it for every update) plus the
SHA-256 and length check of the downloaded artifact; compared with downloading the same
artifact over loopback HTTP in the same run (loopback is the fastest link there is, so
the ratio is the worst case; the 10 Mbit/s column is computed from the size).  Median
of 15 runs each.  The machine is a shared 2-core box under load (load average about 10
during the run), so the milliseconds are noisy from run to run; the byte counts are not.

Delta = the bytes the device's updater reports receiving for a head-only model change,
against the full package, with the server offering a bsdiff4 patch.  v2's head (the last
dense, softmax layer) is retrained for real: 5 epochs of the on-device trainer's SGD
(``agent.learning.trainer``) on the features the frozen layers give for the digits
training set, every other weight identical, both versions built by the same builder.  The
firmware row is a bundle whose image changed in 10 bytes, after the device installed the
shipped bundle in full (the base a firmware delta needs).  Every update, firmware
included, ran through the real updater: delta fetched, rebuilt, verified against the
signed hash, staged, self-tested (models) or booted in the other A/B slot (firmware),
switched, committed."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import bsdiff4
import httpx

from agent.learning.trainer import LocalConfig, Mlp, train
from agent.serving import ModelService
from agent.updates.fetch import download_resumable
from agent.updates.firmware import ABSlotHandler, InstallHandler
from agent.updates.health import HealthTally
from agent.updates.slots import ModelSlots
from agent.updates.trust import TrustedRepository, save_root
from agent.updates.updater import UpdatePolicy, Updater
from edgefleet_contract.firmware import pack_bundle, parse_bundle
from edgefleet_contract.messages import TargetRef
from edgefleet_contract.package import read_package
from fleet_server.modelkit.build import Flavor
from fleet_server.modelkit.digits import PREPROCESSING, split
from fleet_server.modelkit.network import Network, apply_layer
from models.build import REFERENCES, SEED
from models.train import init_network
from tests.tuf_sim import RepoServer, TufRepo, sha256

from ._digits import digits_package

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "fleet_server" / "factory_models"
RUNS = 15


HEAD_TRAINING = LocalConfig(epochs=5, lr=0.05, batch_size=32)
"""How the head is retrained: the on-device trainer's SGD, a few epochs on the digits set."""


def _retrain_head(network: Network) -> Network:
    """``network`` with its last (dense, softmax) layer trained further, the rest frozen.

    The head is trained by the project's own on-device trainer
    (:mod:`agent.learning.trainer`) on the features the frozen layers give for the
    builder's digits training set, as a head-only round would, so the weights that
    change are those a real retraining changes, by as much as it changes them."""
    data = split()
    x = PREPROCESSING.apply(data.x_train).reshape((-1, *network.input_shape))
    for layer in network.layers[:-1]:
        x = apply_layer(layer, x, network.weights)
    last = network.layers[-1]
    head_weights = {k: network.weights[k] for k in (last.weight, last.bias) if k is not None}
    head = Network((x.shape[1],), (last,), head_weights)
    fit = train(Mlp(head.trainable), head.weights, x, data.y_train, HEAD_TRAINING)
    return network.with_weights({**network.weights, **fit.weights})


def head_only_pair(name: str, flavor: Flavor) -> tuple[bytes, bytes]:
    """(v1, v2) from the same builder, v2 with its last (dense, softmax) layer retrained.

    The MLP starts from its shipped (trained) weights; the CNN ships none, so it
    starts from its seeded initial weights: the bytes that change are the same.
    """
    if name == "digits":
        network = Network.from_package(read_package(DIST / f"digits-1.0.0-{flavor}.efpkg"))
        trainable = True
    else:
        ref = REFERENCES[name]
        network = init_network(ref.input_shape, ref.layers, ref.widths, seed=SEED)
        trainable = False
    network2 = _retrain_head(network)
    v1, v2 = (
        digits_package(
            net,
            name=name,
            version=version,
            flavor=flavor,
            run_id="bench",
            created_at=1.8e9,
            trainable=trainable,
        )
        for net, version in ((network, "1.0.0"), (network2, "1.1.0"))
    )
    return v1, v2


def device(
    tmp: Path,
    server: RepoServer,
    first: bytes,
    *,
    firmware: InstallHandler | None = None,
    hardware: str = "generic",
) -> Updater:
    """A device serving ``first``, enrolled against ``server``'s repository."""
    save_root(tmp, server.repo.root_json())
    initial = tmp / "first.efpkg"
    initial.write_bytes(first)
    ModelSlots(tmp).install_initial(initial)
    service = ModelService(recorder=None)
    active = ModelSlots(tmp).active()
    assert active is not None
    service.replace(active.package)
    return Updater(
        tmp,
        server.url,
        host=service,
        health=HealthTally(),
        policy=UpdatePolicy(probation_s=0.0, poll_s=0.01),
        firmware=firmware,
        hardware=hardware,
    )


def delta_rows() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name, flavor in (
        ("digits", "onnx-float32"),
        ("digits", "onnx-int8"),
        ("digits", "tflite-float32"),
        ("digits", "tflite-int8"),
        ("digits-cnn", "onnx-float32"),
        ("digits-cnn", "tflite-float32"),
    ):
        v1, v2 = head_only_pair(name, flavor)  # type: ignore[arg-type]
        repo = TufRepo()
        target = f"models/{name}/1.1.0/{name}-1.1.0-{flavor}.efpkg"
        custom = {"kind": "model", "name": name, "version": "1.1.0"}
        repo.add_target(target, v2, custom)
        repo.publish()
        repo.deltas[(sha256(v1), sha256(v2))] = bsdiff4.diff(v1, v2)
        server = RepoServer(repo)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                updater = device(Path(tmp), server, v1)
                ref = TargetRef(kind="model", name=name, version="1.1.0", target=target)
                final = updater.run(ref, 1)
        finally:
            server.close()
        assert final.phase == "committed", final
        note = {
            "used": "delta rebuilt, hash-verified, self-tested, committed",
            "rejected": "delta saves <10%: full download, committed",
        }.get(final.delta, final.delta)
        rows.append(
            {
                "comparison": "delta / full, head-only model change",
                "artifact": f"{name} {flavor}",
                "baseline": f"{len(v2):,} B full package",
                "measured": f"{final.bytes_transferred:,} B received",
                "ratio": f"{final.bytes_transferred / len(v2):.3f}",
                "note": note,
            }
        )
    rows.append(firmware_delta_row())
    return rows


def _firmware_pair() -> tuple[bytes, bytes]:
    """The shipped edge-os bundle and the same bundle, re-versioned, with 10 image bytes changed."""
    first = (ROOT / "firmware_images" / "dist" / "edge-os-1.1.0.efbundle").read_bytes()
    bundle = parse_bundle(first)
    image = bytearray(bundle.image)
    image[4096:4106] = b"0123456789"
    fields = {
        "name": bundle.manifest.name,
        "version": "1.1.1",
        "hardware": bundle.manifest.hardware,
        "created_at": bundle.manifest.created_at,
    }
    return first, pack_bundle(fields, bytes(image))


def firmware_delta_row() -> dict[str, object]:
    """The firmware delta through the device's real updater and its A/B slot handler.

    The device first installs the shipped bundle in full (which keeps it as the base of
    the next delta), then updates to the changed bundle with the server offering a
    bsdiff4 patch: the row is what the updater reports receiving for that second update."""
    first, second = _firmware_pair()
    manifest = parse_bundle(first).manifest
    repo = TufRepo()
    refs = []
    for data in (first, second):
        version = parse_bundle(data).manifest.version
        target = f"firmware/{manifest.name}/{version}/{manifest.name}-{version}.efbundle"
        custom = {
            "kind": "firmware",
            "name": manifest.name,
            "version": version,
            "hardware": list(manifest.hardware),
        }
        repo.add_target(target, data, custom)
        refs.append(TargetRef(kind="firmware", name=manifest.name, version=version, target=target))
    repo.publish()
    repo.deltas[(sha256(first), sha256(second))] = bsdiff4.diff(first, second)
    server = RepoServer(repo)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            handler = ABSlotHandler(Path(tmp) / "fw", initial_version="1.0.0")
            model = (DIST / "digits-1.0.0-onnx-float32.efpkg").read_bytes()
            dev = Path(tmp) / "dev"
            dev.mkdir()
            updater = device(dev, server, model, firmware=handler, hardware=manifest.hardware[0])
            full = updater.run(refs[0], 1)
            assert full.phase == "committed", full
            final = updater.run(refs[1], 2)
            assert final.phase == "committed" and handler.current_version() == "1.1.1", final
    finally:
        server.close()
    return {
        "comparison": "delta / full, firmware image changed in 10 bytes",
        "artifact": f"{manifest.name} bundle",
        "baseline": f"{len(second):,} B full bundle",
        "measured": f"{final.bytes_transferred:,} B received",
        "ratio": f"{final.bytes_transferred / len(second):.3f}",
        "note": f"delta {final.delta}: rebuilt, hash-verified, A/B slot switched, committed",
    }


def verification_rows() -> list[dict[str, object]]:
    data = (DIST / "digits-cnn-1.0.0-onnx-float32.efpkg").read_bytes()
    repo = TufRepo()
    target_path = "models/digits-cnn/1.0.0/digits-cnn-1.0.0-onnx-float32.efpkg"
    repo.add_target(target_path, data, {"kind": "model"})
    repo.publish()
    server = RepoServer(repo)
    refresh, hashing, download = [], [], []
    try:
        with tempfile.TemporaryDirectory() as tmp, httpx.Client() as client:
            work = Path(tmp)
            save_root(work, repo.root_json())
            trust = TrustedRepository(work, server.url, client)
            for i in range(RUNS):
                repo.publish()  # a new timestamp, snapshot and targets every time
                t0 = time.perf_counter()
                target = trust.lookup(target_path)
                t1 = time.perf_counter()
                part = work / f"{i}.part"
                download_resumable(client, target.url, part, target.length)
                t2 = time.perf_counter()
                got = part.read_bytes()
                assert len(got) == target.length and sha256(got) == target.sha256
                t3 = time.perf_counter()
                refresh.append(t1 - t0)
                download.append(t2 - t1)
                hashing.append(t3 - t2)
    finally:
        server.close()
    r, h, d = (statistics.median(v) * 1000 for v in (refresh, hashing, download))
    link_ms = len(data) * 8 / 10e6 * 1000
    return [
        {
            "comparison": "verification / download (per update)",
            "artifact": f"digits-cnn onnx-float32, {len(data) / 1024:.0f} KiB",
            "baseline": f"{d:.1f} ms download on loopback; {link_ms:.0f} ms at 10 Mbit/s",
            "measured": f"{r + h:.1f} ms (TUF refresh {r:.1f} ms + hash {h:.2f} ms)",
            "ratio": f"{(r + h) / d:.2f}x loopback, {(r + h) / link_ms:.3f}x at 10 Mbit/s",
            "note": "fresh ngclient Updater per update, 4 roles re-signed each run",
        }
    ]


def run() -> list[dict[str, object]]:
    return verification_rows() + delta_rows()
