"""Hardening: public deltas never compute on request; uploads refuse odd archives
without revealing server paths.

Regression tests for the security review of issue 19: each failed before its fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _bundle(folder: Path, name: str, version: str, seed: int, size: int = 96 * 1024) -> Path:
    import hashlib

    from edgefleet_contract.firmware import write_bundle

    base = hashlib.shake_256(b"image").digest(size)
    image = bytearray(base)
    image[seed * 997 % size] ^= 0xFF  # versions differ a little: a patch is small
    path = folder / f"{name}-{version}.efbundle"
    write_bundle(path, {"name": name, "version": version, "hardware": ["x"]}, bytes(image))
    return path


def test_a_delta_request_never_computes_only_registration_does(tmp_path: Path) -> None:
    import hashlib

    from .ota_server import make_env

    env = make_env(tmp_path)
    operator = env.login("olga")

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    a = _bundle(tmp_path, "edge-os", "1.0.0", 1)
    other = _bundle(tmp_path, "other-os", "7.0.0", 2)  # another product: no delta made
    for path in (a, other):
        assert env.push("firmware", path, operator).status_code == 201
    deltas = env.client.app.state.ctx.deltas  # type: ignore[attr-defined]
    deltas.wait()
    r = env.client.get(f"/tuf/deltas/{sha(a)}/{sha(other)}")  # anyone may ask for any pair
    assert r.status_code == 404 and "download the full target" in r.json()["detail"]
    assert not list((env.data_dir / "deltas").glob(f"{sha(a)}-{sha(other)}.*"))  # nothing cached
    # The next version of the same product gets its patch when it is registered.
    b = _bundle(tmp_path, "edge-os", "1.1.0", 3)
    assert env.push("firmware", b, operator).status_code == 201
    deltas.wait()
    r = env.client.get(f"/tuf/deltas/{sha(a)}/{sha(b)}")
    assert r.status_code == 200 and len(r.content) < b.stat().st_size // 4


def test_delta_work_and_cache_are_bounded(tmp_path: Path) -> None:
    import hashlib
    import threading

    from fleet_server.registry import BlobStore, DeltaCache

    blobs = BlobStore(tmp_path / "blobs")
    shas = []
    for i in range(6):
        path = _bundle(tmp_path, "edge-os", f"1.{i}.0", i + 1)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        blobs.put(path, sha)
        shas.append(sha)
    target = shas[-1]
    cache = DeltaCache(blobs, tmp_path / "deltas", workers=1, max_pending=2)
    gate = threading.Lock()
    gate.acquire()
    cache._busy[(shas[0], target)] = gate  # the one worker blocks on the first pair
    try:
        assert cache.schedule(shas[:5], target) == 2  # one running, one waiting
        assert cache.dropped == 3
    finally:
        gate.release()
    cache.wait()
    one = cache.patch(shas[0], target)
    assert one is not None
    # the cache keeps at most max_bytes: the oldest patches go first
    small = DeltaCache(blobs, tmp_path / "small", max_bytes=one.stat().st_size * 2 + 10)
    for source in shas[:5]:
        small.compute(source, target)
    kept = list((tmp_path / "small").glob("*.bsdiff"))
    assert sum(p.stat().st_size for p in kept) <= small.max_bytes
    assert small.evicted >= 2 and len(kept) <= 2
    cache.close()
    small.close()


def test_upload_refusals_do_not_reveal_server_paths(tmp_path: Path) -> None:
    from .ota_server import make_env

    env = make_env(tmp_path)
    operator = env.login("olga")
    junk = tmp_path / "junk.efpkg"
    junk.write_bytes(b"not a zip at all" * 100)
    for kind in ("model", "firmware"):
        r = env.push(kind, junk, operator)
        assert r.status_code == 400
        detail = r.json()["detail"]
        assert str(env.data_dir) not in detail and "upload-" not in detail, detail
        assert "the uploaded file" in detail or "not a" in detail


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_package_with_bytes_around_the_zip_is_refused(tmp_path: Path, where: str) -> None:
    from edgefleet_contract import firmware, package
    from edgefleet_contract.errors import PackageError

    from .ota_server import DIGITS, FIRMWARE, make_env

    junk = b"#!/bin/sh\necho surprise\nexit 0\n"
    env = make_env(tmp_path)
    operator = env.login("olga")
    bundle = FIRMWARE / "edge-os-1.0.0.efbundle"
    for source, read, kind in (
        (DIGITS, package.read_package, "model"),
        (bundle, firmware.read_bundle, "firmware"),
    ):
        body = source.read_bytes()
        odd = tmp_path / f"odd-{kind}{source.suffix}"
        odd.write_bytes(junk + body if where == "before" else body + junk)
        with pytest.raises(PackageError, match="bytes before or after the zip"):
            read(odd)
        r = env.push(kind, odd, operator)
        assert r.status_code == 400 and "bytes before or after" in r.json()["detail"]
        read(source)  # the untouched file still reads
    assert env.client.get("/api/v1/artifacts", headers=operator).json()["total"] == 0
