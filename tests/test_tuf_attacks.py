"""What the server publishes holds up to the TUF attack list, as python-tuf's ngclient sees it.

The server's disk is the attacker's playground here: each test tampers with
files the HTTP app serves and asserts the device's client refuses.  (The
device-side handling -- keep the current model, report why -- is the agent's.)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from tuf.api import exceptions

from .ota_server import DIGITS, make_env, model_version

TARGET = "models/digits/1.0.0/digits-1.0.0-onnx-int8.efpkg"


def _flip_a_bit(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[100] ^= 0x01
    return bytes(flipped)


def _endless(data: bytes) -> bytes:
    return data + bytes(10_000_000)


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        pytest.param(_flip_a_bit, exceptions.LengthOrHashMismatchError, id="tampered"),
        # Endless data is cut at the signed length.
        pytest.param(_endless, exceptions.DownloadLengthMismatchError, id="endless"),
    ],
)
def test_a_tampered_artifact_is_refused(
    tmp_path: Path, tamper: Callable[[bytes], bytes], error: type[Exception]
) -> None:
    env = make_env(tmp_path)
    pushed = env.push("model", DIGITS, env.login("olga")).json()
    blob = env.registry.blob(pushed["sha256"])
    assert blob is not None
    blob.write_bytes(tamper(blob.read_bytes()))
    device = env.updater(tmp_path / "device")
    device.refresh()
    info = device.get_targetinfo(TARGET)
    assert info is not None
    with pytest.raises(error):
        device.download_target(info, str(tmp_path / "got"))
    assert not (tmp_path / "got").exists()


def test_replayed_old_metadata_is_refused(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    operator = env.login("olga")
    env.push("model", DIGITS, operator)
    old_timestamp = (env.tuf.metadata_dir / "timestamp.json").read_bytes()
    env.push("model", model_version(tmp_path, "1.1.0"), operator)
    device_dir = tmp_path / "device"
    env.updater(device_dir).refresh()  # the device has seen the newer timestamp
    (env.tuf.metadata_dir / "timestamp.json").write_bytes(old_timestamp)  # rollback attempt
    with pytest.raises(exceptions.BadVersionNumberError):
        env.updater(device_dir).refresh()


def test_mixed_metadata_versions_are_refused(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    operator = env.login("olga")
    env.push("model", DIGITS, operator)
    env.push("model", model_version(tmp_path, "1.1.0"), operator)
    latest = env.tuf.targets().signed.version
    # Serve the older (validly signed) targets under the name the snapshot points to.
    md = env.tuf.metadata_dir
    shutil.copy(md / f"{latest - 1}.targets.json", md / f"{latest}.targets.json")
    with pytest.raises(exceptions.RepositoryError):
        env.updater(tmp_path / "device").refresh()


def test_metadata_signed_by_a_wrong_key_is_refused(tmp_path: Path) -> None:
    from fleet_server.tuf import keys

    env = make_env(tmp_path)
    env.push("model", DIGITS, env.login("olga"))
    # A targets file re-signed by a key the root does not list (e.g. a revoked one).
    md = env.tuf.targets()
    md.signed.version += 1
    md.sign(keys.generate())
    path = env.tuf.metadata_dir / f"{md.signed.version - 1}.targets.json"
    path.write_bytes(md.to_bytes())
    with pytest.raises(exceptions.UnsignedMetadataError):
        env.updater(tmp_path / "device").refresh()
