"""The model package format: round trips, determinism, and refusal of hostile files."""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet_contract.errors import PackageError
from edgefleet_contract.multivariate import PCA_NAME
from edgefleet_contract.package import (
    MANIFEST_NAME,
    MAX_MEMBERS,
    WEIGHTS_NAME,
    Manifest,
    as_task,
    drift_width,
    encode_weights,
    manifest_json,
    pack_package,
    parse_package,
    read_package,
    write_package,
)

DIST = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models"
MLP = DIST / "digits-1.0.0-onnx-float32.efpkg"


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def original() -> tuple[dict[str, bytes], dict[str, object]]:
    with zipfile.ZipFile(MLP) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    return members, json.loads(members[MANIFEST_NAME])


def _with_manifest(members: dict[str, bytes], doc: dict[str, object]) -> bytes:
    return _zip({**members, MANIFEST_NAME: json.dumps(doc).encode()})


def test_shipped_package_reads_back_verified() -> None:
    package = read_package(MLP)
    assert package.sha256 == hashlib.sha256(MLP.read_bytes()).hexdigest()
    assert package.ref.sha256 == package.sha256
    assert (package.ref.name, package.ref.runtime) == ("digits", "onnx")
    m = package.manifest
    assert m.flavor == "onnx-float32" and m.features == 64 and len(m.labels) == 10
    weights = package.weights()
    assert weights["dense0.weight"].shape == (64, 32)
    assert {f.path for f in m.files} == {"model.onnx", WEIGHTS_NAME, "calibration.json", PCA_NAME}


def test_write_is_deterministic_and_atomic(tmp_path: Path) -> None:
    package = read_package(MLP)
    files = dict(package.members)
    first = pack_package(package.manifest, files)
    assert first == pack_package(package.manifest, files)
    written = write_package(tmp_path / "copy.efpkg", package.manifest, files)
    assert written.sha256 == hashlib.sha256(first).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["copy.efpkg"]


def test_members_are_stored_with_the_manifest_last() -> None:
    """Stored members keep a small change small for a binary delta (docs/model-package.md)."""
    with zipfile.ZipFile(MLP) as archive:
        infos = archive.infolist()
    names = ["calibration.json", PCA_NAME, "model.onnx", WEIGHTS_NAME, MANIFEST_NAME]
    assert [i.filename for i in infos] == names
    assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
    with zipfile.ZipFile(io.BytesIO(read_package(MLP).members[WEIGHTS_NAME])) as npz:
        assert {i.compress_type for i in npz.infolist()} == {zipfile.ZIP_STORED}


def test_deflated_packages_still_read(
    original: tuple[dict[str, bytes], dict[str, object]],
) -> None:
    """Packages written before members were stored (deflated, manifest first) stay valid."""
    members, _ = original
    old = _zip({MANIFEST_NAME: members[MANIFEST_NAME], **members})
    with zipfile.ZipFile(io.BytesIO(old)) as archive:
        assert archive.infolist()[0].compress_type == zipfile.ZIP_DEFLATED
    package = parse_package(old)
    assert package.manifest == read_package(MLP).manifest
    assert dict(package.members) == {k: v for k, v in members.items() if k != MANIFEST_NAME}


def test_tampered_member_is_named(original: tuple[dict[str, bytes], dict[str, object]]) -> None:
    members, _ = original
    evil = bytearray(members["model.onnx"])
    evil[-10] ^= 0xFF
    with pytest.raises(PackageError, match=r"model\.onnx does not match its SHA-256"):
        parse_package(_zip({**members, "model.onnx": bytes(evil)}))


@pytest.mark.parametrize(
    "name", ["../evil.onnx", "/etc/passwd", "sub/model.onnx", "..", "a\\b", ".hidden"]
)
def test_member_names_cannot_escape(
    original: tuple[dict[str, bytes], dict[str, object]], name: str
) -> None:
    members, _ = original
    with pytest.raises(PackageError, match="not allowed"):
        parse_package(_zip({**members, name: b"x"}))


def test_limits(original: tuple[dict[str, bytes], dict[str, object]], tmp_path: Path) -> None:
    members, _ = original
    crowd = {**members, **{f"f{i}.bin": b"" for i in range(MAX_MEMBERS)}}
    with pytest.raises(PackageError, match="at most"):
        parse_package(_zip(crowd))
    with pytest.raises(PackageError, match="limit"):
        read_package(MLP, max_bytes=1000)
    bomb = _zip({**members, "model.onnx": b"\0" * 5_000_000})
    assert len(bomb) < 100_000
    with pytest.raises(PackageError, match="limit"):
        parse_package(bomb, max_bytes=1_000_000)
    with pytest.raises(PackageError, match="not a zip"):
        parse_package(b"definitely not a zip")
    with pytest.raises(PackageError, match="cannot read"):
        read_package(tmp_path / "absent.efpkg")


def test_unlisted_missing_and_unknown_format(
    original: tuple[dict[str, bytes], dict[str, object]],
) -> None:
    members, doc = original
    with pytest.raises(PackageError, match=r"stowaway\.bin is not listed"):
        parse_package(_zip({**members, "stowaway.bin": b"x"}))
    without = {k: v for k, v in members.items() if k != WEIGHTS_NAME}
    with pytest.raises(PackageError, match=r"weights\.npz is listed .* but missing"):
        parse_package(_zip(without))
    with pytest.raises(PackageError, match=r"no manifest\.json"):
        parse_package(_zip({"model.onnx": members["model.onnx"]}))
    with pytest.raises(PackageError, match="format 2"):
        parse_package(_with_manifest(members, {**doc, "format": 2}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "1.0"}, "version"),
        ({"surprise": 1}, "surprise"),
        ({"flavor": "onnx-int8"}, "flavor"),
        ({"runtime": "tensorrt"}, "runtime"),
        ({"labels": ["a", "b"]}, "labels"),
        ({"created_at": float("nan")}, "created_at"),
    ],
)
def test_manifest_is_closed_and_consistent(
    original: tuple[dict[str, bytes], dict[str, object]], change: dict[str, object], message: str
) -> None:
    members, doc = original
    raw = json.dumps({**doc, **change}).encode()  # json writes NaN for nan: must still refuse
    with pytest.raises(PackageError, match=message):
        parse_package(_zip({**members, MANIFEST_NAME: raw}))


def test_self_test_rows_must_fit_the_model(
    original: tuple[dict[str, bytes], dict[str, object]],
) -> None:
    members, doc = original
    self_test = dict(doc["self_test"])  # type: ignore[call-overload]
    self_test["inputs"] = [[0.0] * 3]
    self_test["expected"] = [[0.1] * 10]
    with pytest.raises(PackageError, match="64 values"):
        parse_package(_with_manifest(members, {**doc, "self_test": self_test}))


def _repacked_with_weights(
    members: dict[str, bytes], doc: dict[str, object], weights: bytes
) -> bytes:
    manifest = Manifest.model_validate({**doc, "files": []})
    files = {k: v for k, v in members.items() if k != MANIFEST_NAME}
    files[WEIGHTS_NAME] = weights
    return pack_package(manifest, files)


def test_weights_are_checked_and_never_unpickled(
    original: tuple[dict[str, bytes], dict[str, object]],
) -> None:
    members, doc = original
    good = read_package(MLP).weights()
    wrong_shape = {**good, "dense0.weight": np.zeros((64, 31), np.float32)}
    with pytest.raises(PackageError, match=r"dense0.weight"):
        _repacked_with_weights(members, doc, encode_weights(wrong_shape))
    buffer = io.BytesIO()
    extra: dict[str, np.ndarray] = {**good, "evil": np.array([{"a": 1}], dtype=object)}
    np.savez(buffer, **extra)  # type: ignore[arg-type]
    with pytest.raises(PackageError, match="evil"):
        _repacked_with_weights(members, doc, buffer.getvalue())
    pickled = io.BytesIO()
    arrays: dict[str, np.ndarray] = {**good, "dense1.bias": np.array([object()] * 10, dtype=object)}
    np.savez(pickled, **arrays)  # type: ignore[arg-type]
    with pytest.raises(PackageError, match=r"dense1.bias is unreadable"):
        _repacked_with_weights(members, doc, pickled.getvalue())
    bomb = _zip({"dense0.weight.npy": b"\0" * 10_000_000})
    with pytest.raises(PackageError, match="larger than its shape allows"):
        _repacked_with_weights(members, doc, bomb)
    with pytest.raises(PackageError, match="NaN"):
        encode_weights({"w": np.array([np.nan], np.float32)})


def test_a_format_1_package_reads_as_a_classifier_of_its_input() -> None:
    m = read_package(MLP).manifest
    assert m.task is None  # format 1: no task in the manifest
    task = as_task(m)
    assert task.kind == "classification" and task.output == "probabilities"
    assert [(r.name, r.preprocessing, r.drift) for r in task.inputs] == [
        ("features", m.preprocessing, "values")
    ]
    assert drift_width(m) == 64  # one drift feature per input value
    assert m.input_spec("features").shape == [-1, 64]
    assert m.output_spec("probabilities").shape == [-1, 10]
    none = task.model_copy(update={"inputs": [task.inputs[0].model_copy(update={"drift": "none"})]})
    assert drift_width(m.model_copy(update={"task": none})) == 0


def _changed(doc: dict[str, object], key: str, **change: object) -> dict[str, object]:
    section = dict(doc[key])  # type: ignore[call-overload]
    return {**doc, key: {**section, **change}}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: {**d, "labels": ["only"]},
            "format 1 has one input, one output and at least two labels",
        ),
        (
            lambda d: {**d, "inputs": d["inputs"] * 2},
            "format 1 has one input, one output and at least two labels",
        ),
        (
            lambda d: {**d, "outputs": d["outputs"] * 2},
            "format 1 has one input, one output and at least two labels",
        ),
        (lambda d: {**d, "labels": ["a", "b"]}, "2 labels for an output of 10 classes"),
        (
            lambda d: _changed(d, "preprocessing", scale=[1.0] * 3),
            "preprocessing.scale has 3 values, need 64",
        ),
        (
            lambda d: _changed(d, "preprocessing", offset=[0.0] * 65),
            "preprocessing.offset has 65 values, need 64",
        ),
        (
            lambda d: _changed(
                d, "self_test", expected=[[0.1] * 3] * len(d["self_test"]["inputs"])
            ),
            "every self_test expected row needs 10 values",
        ),
        (
            lambda d: _changed(d, "drift", features=d["drift"]["features"][:3]),
            "the drift reference must describe 64 features",
        ),
        (
            lambda d: _changed(d, "trainable", input_shape=[8, 4]),
            "trainable.input_shape does not hold the input's feature count",
        ),
    ],
)
def test_a_format_1_manifest_that_does_not_fit_its_model_says_why(
    original: tuple[dict[str, bytes], dict[str, object]],
    edit: Callable[[Any], dict[str, object]],
    message: str,
) -> None:
    members, doc = original
    with pytest.raises(PackageError, match=re.escape(message)):
        parse_package(_with_manifest(members, edit(doc)))


def test_a_format_1_manifest_is_written_with_only_the_fields_format_1_had() -> None:
    manifest = read_package(MLP).manifest
    written = json.loads(manifest_json(manifest))
    assert "task" not in written and "rtol" not in written["self_test"]
    assert written["format"] == 1 and written["labels"] == manifest.labels
    assert Manifest.model_validate(written) == manifest  # nothing else is left out
