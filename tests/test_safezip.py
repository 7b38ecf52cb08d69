"""The zip reader model packages and firmware bundles share: the refusals their own tests miss."""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import pytest

from edgefleet_contract.errors import PackageError
from edgefleet_contract.package import MAX_MANIFEST_BYTES, Manifest, parse_package
from edgefleet_contract.safezip import (
    ArchiveKind,
    load_manifest,
    open_zip,
    read_verified,
    unpack,
    write_atomically,
)

KIND = ArchiveKind(noun="thing", title="test thing")


def _zip(*members: tuple[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about a duplicate name, and writes it
        with zipfile.ZipFile(buffer, "w", method) as archive:
            for info, content in members:
                archive.writestr(info, content)
    return buffer.getvalue()


def _unpack(data: bytes, max_bytes: int = 1 << 20, **limits: int) -> dict[str, bytes]:
    with open_zip(data, max_bytes=max_bytes, kind=KIND) as archive:
        return unpack(archive, max_bytes=max_bytes, limits=limits)


def test_good_members_come_back_by_name() -> None:
    data = _zip(("a.bin", b"alpha"), ("b.json", b"{}"), method=zipfile.ZIP_DEFLATED)
    assert _unpack(data) == {"a.bin": b"alpha", "b.json": b"{}"}


def test_encrypted_and_exotic_members_are_refused() -> None:
    locked = bytearray(_zip(("a.bin", b"secret")))
    central = locked.rfind(b"PK\x01\x02")
    locked[central + 8] |= 0x1  # the central directory's "encrypted" flag bit
    with pytest.raises(PackageError, match=r"a\.bin is encrypted"):
        _unpack(bytes(locked))
    with pytest.raises(PackageError, match="unsupported compression"):
        _unpack(_zip(("a.bin", b"x" * 100), method=zipfile.ZIP_BZIP2))


def test_a_name_given_twice_is_refused() -> None:
    with pytest.raises(PackageError, match=r"a\.bin appears twice"):
        _unpack(_zip(("a.bin", b"first"), ("a.bin", b"second")))


def test_a_damaged_member_is_refused() -> None:
    data = bytearray(_zip(("a.bin", b"payload-bytes" * 10)))
    at = data.index(b"payload-bytes")
    data[at] ^= 0xFF  # the CRC no longer matches
    with pytest.raises(PackageError, match=r"a\.bin is corrupt"):
        _unpack(bytes(data))


def test_a_member_limit_refuses_from_the_header() -> None:
    # 100 kB of zeros deflate to a few hundred bytes; the declared size alone refuses it.
    data = _zip(("m.json", bytes(100_000)), method=zipfile.ZIP_DEFLATED)
    assert len(data) < 1000
    with pytest.raises(PackageError, match=r"m\.json is over the 1000-byte limit"):
        _unpack(data, **{"m.json": 1000})
    assert _unpack(data, **{"other.json": 1000})["m.json"] == bytes(100_000)


def test_a_package_manifest_over_its_limit_is_refused() -> None:
    raw = bytes(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(PackageError, match=f"manifest.json is over the {MAX_MANIFEST_BYTES}"):
        parse_package(_zip(("manifest.json", raw), method=zipfile.ZIP_DEFLATED))


def test_messages_name_the_kind(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="over the 3-byte thing limit"):
        open_zip(b"four", max_bytes=3, kind=KIND)
    with pytest.raises(PackageError, match=r"not a test thing \(not a zip file"):
        open_zip(b"four", max_bytes=10, kind=KIND)
    with pytest.raises(PackageError, match="cannot read test thing"):
        read_verified(tmp_path / "absent", bytes, max_bytes=10, kind=KIND)
    with pytest.raises(PackageError, match="rebuild the thing"):
        load_manifest(b'{"format": 9}', Manifest, format_version=1, kind=KIND)


def test_write_atomically_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.bin"
    write_atomically(target, b"one")
    write_atomically(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.bin"]
    assert read_verified(target, bytes.upper, max_bytes=3, kind=KIND) == b"TWO"
    with pytest.raises(PackageError, match=r"x\.bin: 3 bytes is over the 2-byte thing limit"):
        read_verified(target, bytes, max_bytes=2, kind=KIND)
