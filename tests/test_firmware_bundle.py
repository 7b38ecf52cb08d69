"""The firmware bundle format: shipped samples, round trips, and refusal of hostile files."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import bsdiff4
import pytest

from edgefleet_contract.errors import PackageError
from edgefleet_contract.firmware import (
    MANIFEST_NAME,
    bundle_filename,
    pack_bundle,
    parse_bundle,
    read_bundle,
    write_bundle,
)
from firmware_images.image import sample_image

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "firmware_images" / "dist"
FIELDS: dict[str, object] = {"name": "edge-os", "version": "2.0.0", "hardware": ["rpi4"]}


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {n: archive.read(n) for n in archive.namelist()}


def test_shipped_samples_verify_and_differ_slightly() -> None:
    old = read_bundle(DIST / "edge-os-1.0.0.efbundle")
    new = read_bundle(DIST / "edge-os-1.1.0.efbundle")
    assert (old.manifest.version, new.manifest.version) == ("1.0.0", "1.1.0")
    assert new.manifest.hardware == ["rpi4", "rpi5"] and new.manifest.handler == "ab-slot"
    assert new.sha256 == hashlib.sha256((DIST / new.filename).read_bytes()).hexdigest()
    assert new.image == sample_image("1.1.0")
    differing = sum(a != b for a, b in zip(old.image, new.image, strict=True))
    assert 0 < differing < len(new.image) // 10
    patch = bsdiff4.diff((DIST / old.filename).read_bytes(), (DIST / new.filename).read_bytes())
    assert len(patch) < new.size // 5


def test_round_trip_is_deterministic(tmp_path: Path) -> None:
    image = b"\x7fELF" + bytes(range(256)) * 10
    fields = {**FIELDS, "created_at": 1_700_000_000.0, "notes": "hello"}
    a = write_bundle(tmp_path / "a.efbundle", fields, image)
    b = write_bundle(tmp_path / "b.efbundle", fields, image)
    assert a.sha256 == b.sha256 and a.image == image
    assert a.manifest.image.sha256 == hashlib.sha256(image).hexdigest()
    assert a.filename == bundle_filename("edge-os", "2.0.0") == "edge-os-2.0.0.efbundle"
    with zipfile.ZipFile(tmp_path / "a.efbundle") as archive:
        assert archive.getinfo("image.bin").compress_type == zipfile.ZIP_STORED


def test_build_tool_writes_a_bundle(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "firmware_images.build",
            "--version",
            "1.2.3",
            "--hardware",
            "jetson-nano",
            "--out",
            str(tmp_path),
            "--created-at",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    bundle = read_bundle(tmp_path / "edge-os-1.2.3.efbundle")
    assert bundle.manifest.hardware == ["jetson-nano"] and bundle.manifest.created_at == 1
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "firmware_images.build",
            "--version",
            "one",
            "--hardware",
            "x",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1 and "not a semantic version" in bad.stderr


@pytest.fixture()
def good() -> dict[str, bytes]:
    return _members(pack_bundle({**FIELDS, "created_at": 5.0}, b"image-bytes" * 100))


def _manifest(members: dict[str, bytes]) -> dict[str, object]:
    doc: dict[str, object] = json.loads(members[MANIFEST_NAME])
    return doc


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.update({"image.bin": m["image.bin"] + b"x"}), "has 1101 bytes"),
        (lambda m: m.update({"image.bin": b"J" + m["image.bin"][1:]}), "SHA-256"),
        (lambda m: m.pop("image.bin"), "exactly manifest.json and one image"),
        (lambda m: m.update({"extra.bin": b""}), "exactly manifest.json and one image"),
        (lambda m: m.update({MANIFEST_NAME: b"{not json"}), "not valid JSON"),
        (lambda m: m.update({MANIFEST_NAME: b'{"format": 2}'}), "format 2"),
    ],
)
def test_tampered_bundles_are_refused(good: dict[str, bytes], mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    members = dict(good)
    mutate(members)
    with pytest.raises(PackageError, match=message):
        parse_bundle(_zip(members))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, "Extra inputs"),
        ({"hardware": []}, "hardware"),
        ({"version": "1.0"}, "version"),
        ({"handler": "../x"}, "handler"),
        ({"image": {"file": "other.bin", "sha256": "0" * 64, "size": 1}}, "other.bin.*missing"),
    ],
)
def test_bad_manifests_are_refused(
    good: dict[str, bytes], change: dict[str, object], message: str
) -> None:
    doc = {**_manifest(good), **change}
    with pytest.raises(PackageError, match=message):
        parse_bundle(_zip({**good, MANIFEST_NAME: json.dumps(doc).encode()}))


def test_hostile_archives_are_refused(good: dict[str, bytes], tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not a zip"):
        parse_bundle(b"PK\x03\x04garbage")
    with pytest.raises(PackageError, match="not allowed"):
        parse_bundle(_zip({MANIFEST_NAME: good[MANIFEST_NAME], "../image.bin": b""}))
    # A bomb: a tiny file that inflates past the limit is refused from its headers.
    bomb = _zip({MANIFEST_NAME: good[MANIFEST_NAME], "image.bin": bytes(2_000_000)})
    assert len(bomb) < 10_000
    with pytest.raises(PackageError, match="unpack to more than"):
        parse_bundle(bomb, max_bytes=1_000_000)
    big = tmp_path / "big.efbundle"
    big.write_bytes(bytes(2048))
    with pytest.raises(PackageError, match="over the 1024-byte bundle limit"):
        read_bundle(big, max_bytes=1024)
    with pytest.raises(PackageError, match="cannot read"):
        read_bundle(tmp_path / "missing.efbundle")


def test_lying_size_header_is_caught(good: dict[str, bytes]) -> None:
    data = bytearray(_zip(good, zipfile.ZIP_STORED))
    # Shrink the image's declared size in the central directory: the read must not trust it.
    central = data.rfind(b"PK\x01\x02")
    size_at = central + 24
    declared = int.from_bytes(data[size_at : size_at + 4], "little")
    data[size_at : size_at + 4] = (declared - 10).to_bytes(4, "little")
    with pytest.raises(PackageError):
        parse_bundle(bytes(data))


def test_write_refuses_bad_fields(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="cannot write the bundle: name"):
        write_bundle(tmp_path / "x.efbundle", {**FIELDS, "name": "bad name"}, b"x")
    with pytest.raises(PackageError, match="cannot be named"):
        pack_bundle({**FIELDS, "image_file": MANIFEST_NAME}, b"x")
