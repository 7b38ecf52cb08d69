"""The model package format: round trips, determinism, and refusal of hostile files."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
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
    Trainable,
    as_task,
    decode_weights,
    drift_width,
    encode_weights,
    manifest_json,
    pack_package,
    parse_package,
    read_package,
    write_package,
)
from edgefleet_contract.preprocess import ImageInput, Preprocessing

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
        (
            lambda d: _changed(d, "preprocessing", mean=[0.5], std=[2.0]),
            "format 1 preprocessing is scale and offset, not ['mean', 'std']",
        ),
        (
            lambda d: _changed(d, "trainable", embedding="emb", backbone_file="backbone.onnx"),
            "a trainable head over an embedding needs format 2",
        ),
    ],
)
def test_a_format_1_manifest_that_does_not_fit_its_model_says_why(
    original: tuple[dict[str, bytes], dict[str, object]],
    edit: Callable[[Any], dict[str, object]],
    message: str,
) -> None:
    members, doc = original
    with pytest.raises(PackageError) as err:
        parse_package(_with_manifest(members, edit(doc)))
    assert str(err.value) == f"manifest.json is invalid: manifest: Value error, {message}"


def test_a_format_1_manifest_is_written_with_only_the_fields_format_1_had() -> None:
    manifest = read_package(MLP).manifest
    written = json.loads(manifest_json(manifest))
    assert "task" not in written and "rtol" not in written["self_test"]
    assert written["format"] == 1 and written["labels"] == manifest.labels
    assert Manifest.model_validate(written) == manifest  # nothing else is left out


def _npy(array: np.ndarray, header_pad: int = 0) -> bytes:
    """``array`` as .npy bytes; ``header_pad`` blanks lengthen the header (numpy reads them)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    raw = buffer.getvalue()
    if not header_pad:
        return raw
    header_len = int.from_bytes(raw[8:10], "little")
    header = raw[10 : 10 + header_len].rstrip(b"\n") + b" " * header_pad + b"\n"
    return raw[:8] + len(header).to_bytes(2, "little") + header + raw[10 + header_len :]


def _npz(arrays: dict[str, bytes]) -> bytes:
    return _zip({f"{name}.npy": blob for name, blob in arrays.items()})


def _trainable_weights() -> tuple[Trainable, dict[str, bytes]]:
    package = read_package(MLP)
    trainable = package.manifest.trainable
    assert trainable is not None
    return trainable, {name: _npy(array) for name, array in package.weights().items()}


def test_weights_that_are_no_npz_or_name_an_unlisted_array_are_refused_by_name() -> None:
    trainable, _ = _trainable_weights()
    with pytest.raises(PackageError) as err:
        decode_weights(b"not a zip", trainable)
    assert str(err.value) == "weights.npz is not a readable .npz file: File is not a zip file"
    long_name = "x" * 100
    with pytest.raises(PackageError) as err:
        decode_weights(_npz({long_name: _npy(np.zeros(1, np.float32))}), trainable)
    assert str(err.value) == f"weights.npz holds {(long_name + '.npy')[:80]!r}, not a listed param"


def test_a_weight_may_take_exactly_its_shape_plus_the_header_allowance() -> None:
    """A param's member may be 4 bytes a value + 4096; one byte more is refused unread."""
    trainable, arrays = _trainable_weights()
    bias = np.arange(10, dtype=np.float32)  # dense1.bias: shape [10]
    limit = 4 * 10 + 4096
    exact = _npy(bias, header_pad=limit - len(_npy(bias)))
    assert len(exact) == limit
    out = decode_weights(_npz({**arrays, "dense1.bias": exact}), trainable)
    assert out["dense1.bias"].tolist() == bias.tolist()
    over = _npy(bias, header_pad=limit + 1 - len(_npy(bias)))
    with pytest.raises(PackageError) as err:
        decode_weights(_npz({**arrays, "dense1.bias": over}), trainable)
    assert str(err.value) == "weights.npz: dense1.bias is larger than its shape allows"


def test_stored_weights_with_nan_or_missing_arrays_are_named() -> None:
    trainable, arrays = _trainable_weights()
    nan = _npy(np.array([np.nan] * 10, np.float32))
    with pytest.raises(PackageError) as err:
        decode_weights(_npz({**arrays, "dense1.bias": nan}), trainable)
    assert str(err.value) == "weights.npz: dense1.bias has NaN or infinite values"
    partial = {k: v for k, v in arrays.items() if not k.endswith(".bias")}
    with pytest.raises(PackageError) as err:
        decode_weights(_npz(partial), trainable)
    assert str(err.value) == "weights.npz has no array dense0.bias"  # the first one missing


def test_encoded_weights_are_float32_whatever_they_were_given_as() -> None:
    raw = encode_weights({"w": np.array([0.5, 1.5], dtype=np.float64)})
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        array = np.lib.format.read_array(io.BytesIO(archive.read("w.npy")), allow_pickle=False)
    assert array.dtype == np.float32 and array.tolist() == [0.5, 1.5]


def test_members_the_manifest_leaves_out_or_sizes_wrongly_are_named(
    original: tuple[dict[str, bytes], dict[str, object]],
) -> None:
    members, doc = original
    files: list[dict[str, object]] = doc["files"]  # type: ignore[assignment]
    unlisted = {**doc, "files": [f for f in files if f["path"] != WEIGHTS_NAME]}
    without = {k: v for k, v in members.items() if k != WEIGHTS_NAME}
    with pytest.raises(PackageError) as err:
        parse_package(_with_manifest(without, unlisted))
    assert str(err.value) == "manifest.json does not list weights.npz in files"
    size = len(members[WEIGHTS_NAME])
    resized = {
        **doc,
        "files": [f if f["path"] != WEIGHTS_NAME else {**f, "size": 1} for f in files],
    }
    with pytest.raises(PackageError) as err:
        parse_package(_with_manifest(members, resized))
    assert str(err.value) == f"weights.npz has {size} bytes, manifest says 1"


def test_a_package_may_hold_exactly_max_members(
    original: tuple[dict[str, bytes], dict[str, object]],
) -> None:
    """At the limit the members are read (and the first unlisted one named); one more is not."""
    members, _ = original
    pad = MAX_MEMBERS - len(members)
    at_limit = {**members, **{f"extra{i:02}": b"" for i in range(pad)}}
    with pytest.raises(PackageError) as err:
        parse_package(_zip(at_limit))
    assert str(err.value) == "member extra00 is not listed in manifest.json"
    with pytest.raises(PackageError) as err:
        parse_package(_zip({**at_limit, "one-more": b""}))
    assert str(err.value) == f"{MAX_MEMBERS + 1} members; a package holds at most {MAX_MEMBERS}"


def test_a_package_of_an_unknown_format_says_to_upgrade_and_a_read_one_knows_its_size(
    original: tuple[dict[str, bytes], dict[str, object]],
) -> None:
    members, doc = original
    with pytest.raises(PackageError) as err:
        parse_package(_with_manifest(members, {**doc, "format": 9}))
    assert str(err.value) == (
        "manifest.json has format 9; this version reads format 1 and 2"
        " (upgrade the agent or rebuild the package)"
    )
    data = MLP.read_bytes()
    assert parse_package(data).size == len(data)


def test_the_weights_of_a_package_that_is_not_trainable_are_refused_by_name() -> None:
    package = read_package(MLP)
    bare = dataclasses.replace(
        package, manifest=package.manifest.model_copy(update={"trainable": None})
    )
    with pytest.raises(PackageError) as err:
        bare.weights()
    assert str(err.value) == "digits 1.0.0 is not trainable"


def test_the_drift_width_adds_every_data_input_that_has_drift() -> None:
    """Values count one feature each, an image's channels two (mean and spread); an input
    without drift adds nothing and does not stop the count."""
    m = read_package(MLP).manifest
    task = as_task(m)
    values, spec = task.inputs[0], m.inputs[0]
    image = Preprocessing(image=ImageInput(height=4, width=4, channels=3))
    quiet = values.model_copy(update={"name": "quiet", "drift": "none"})
    camera = values.model_copy(update={"name": "cam", "drift": "channels", "preprocessing": image})
    several = m.model_copy(
        update={
            "task": task.model_copy(update={"inputs": [quiet, values, camera]}),
            "inputs": [
                spec.model_copy(update={"name": "quiet"}),
                spec,
                spec.model_copy(update={"name": "cam", "shape": [-1, 4, 4, 3]}),
            ],
        }
    )
    assert drift_width(several) == 64 + 2 * 3


def test_the_byte_limit_of_a_read_bounds_what_its_members_unpack_to(
    original: tuple[dict[str, bytes], dict[str, object]], tmp_path: Path
) -> None:
    """A small deflated file is no way round ``max_bytes``: the inflated members count."""
    members, _ = original
    path = tmp_path / "deflated.efpkg"
    path.write_bytes(_zip(members))
    limit = path.stat().st_size
    with pytest.raises(PackageError) as err:
        read_package(path, max_bytes=limit)
    assert str(err.value) == f"{path}: the members unpack to more than the {limit}-byte limit"


def test_a_package_with_more_files_than_a_manifest_lists_is_not_written(
    original: tuple[dict[str, bytes], dict[str, object]],
) -> None:
    members, _ = original
    files = {k: v for k, v in members.items() if k != MANIFEST_NAME}
    files |= {f"extra{i:02}": b"" for i in range(MAX_MEMBERS - len(files))}
    with pytest.raises(PackageError) as err:
        pack_package(read_package(MLP).manifest, files)
    assert str(err.value) == (
        "cannot write the package: files: List should have at most 15 items after validation,"
        " not 16"
    )
