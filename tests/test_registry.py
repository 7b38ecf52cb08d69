"""The registry's Python API: validation, content-addressed storage, lineage, resolve."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from edgefleet_contract.errors import EdgefleetError, NotFound, PackageError, StoreError
from fleet_server.registry import ArtifactRegistry, BlobStore
from fleet_server.store import open_store

from .ota_server import DIGITS, FIRMWARE, MODELS, make_env, model_version


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {n: archive.read(n) for n in archive.namelist()}


def _zip(members: dict[str, bytes], out: Path) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    out.write_bytes(buffer.getvalue())
    return out


def test_add_model_stores_by_hash_and_signs(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    lineage = {"source": "federated", "run_id": "fl-42", "parent": "digits@1.0.0"}
    candidate = model_version(tmp_path, "1.1.0")
    added = env.registry.add_model(candidate, lineage=lineage, actor="fl")
    assert added.spec == "digits@1.1.0:onnx-int8" and added.runtime == "onnx"
    assert added.lineage["run_id"] == "fl-42" and added.lineage["parent"] == "digits@1.0.0"
    stored = env.data_dir / "artifacts" / "sha256" / added.sha256[:2] / added.sha256
    assert stored.read_bytes() == candidate.read_bytes()
    assert env.registry.blob(added.sha256) == stored
    assert env.registry.blob("../../fleet.db") is None
    assert added.target_path in env.tuf.targets().signed.targets


def test_resolve(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    for flavor in ("onnx-int8", "tflite-int8"):
        env.registry.add_model(MODELS / f"digits-1.0.0-{flavor}.efpkg", lineage={}, actor="t")
    env.registry.add_firmware(FIRMWARE / "edge-os-1.1.0.efbundle", actor="t")
    one = env.registry.resolve("digits@1.0.0:tflite-int8")
    assert one.target_path == "models/digits/1.0.0/digits-1.0.0-tflite-int8.efpkg"
    assert env.registry.resolve("edge-os@1.1.0").kind == "firmware"
    assert len(env.registry.resolve_all("digits@1.0.0")) == 2
    with pytest.raises(EdgefleetError, match="add :flavor"):
        env.registry.resolve("digits@1.0.0")
    with pytest.raises(NotFound, match=r"no artifact digits@9\.9\.9"):
        env.registry.resolve("digits@9.9.9")
    with pytest.raises(EdgefleetError, match="not an artifact spec"):
        env.registry.resolve("digits")
    with pytest.raises(NotFound):
        env.registry.resolve("edge-os@1.1.0", kind="model")


def test_incomplete_and_tampered_packages_are_refused(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    members = _members(DIGITS)
    manifest = json.loads(members["manifest.json"])
    missing = _zip({k: v for k, v in members.items() if k != "model.onnx"}, tmp_path / "a.efpkg")
    with pytest.raises(PackageError, match=r"model.onnx is listed in manifest.json but missing"):
        env.registry.add_model(missing, lineage={}, actor="t")
    no_tests = {**manifest, "self_test": {**manifest["self_test"], "inputs": [], "expected": []}}
    path = _zip({**members, "manifest.json": json.dumps(no_tests).encode()}, tmp_path / "b.efpkg")
    with pytest.raises(PackageError, match="self_test"):
        env.registry.add_model(path, lineage={}, actor="t")
    runtime = {**manifest, "runtime": "tensorrt"}
    path = _zip({**members, "manifest.json": json.dumps(runtime).encode()}, tmp_path / "c.efpkg")
    with pytest.raises(PackageError, match="runtime"):
        env.registry.add_model(path, lineage={}, actor="t")
    swapped = {**members, "model.onnx": members["model.onnx"][:-1] + b"\0"}
    path = _zip(swapped, tmp_path / "d.efpkg")
    with pytest.raises(PackageError, match="SHA-256"):
        env.registry.add_model(path, lineage={}, actor="t")
    assert env.store.find_artifacts().total == 0
    assert not (env.data_dir / "artifacts" / "sha256").exists()


def test_pushing_again_repairs_a_missing_target(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    # A registry without TUF stands in for a crash between the row and the signature.
    bare = ArtifactRegistry(env.store, BlobStore(env.data_dir / "artifacts"))
    added = bare.add_model(DIGITS, lineage={}, actor="t")
    assert added.target_path not in env.tuf.targets().signed.targets
    again = env.registry.add_model(DIGITS, lineage={}, actor="t")
    assert again.id == added.id
    assert added.target_path in env.tuf.targets().signed.targets


def test_store_refuses_changed_bytes(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    added = env.registry.add_model(DIGITS, lineage={}, actor="t")
    from dataclasses import replace

    with pytest.raises(StoreError, match="already registered"):
        env.store.add_artifact(replace(added, sha256="0" * 64))
    reopened = open_store(env.data_dir / "fleet.db")
    assert reopened.get_artifact(added.id) == added
