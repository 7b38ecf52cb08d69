"""The server's TUF repository, checked by python-tuf's real ngclient over the HTTP app.

Each test plays a device with ``tuf.ngclient.Updater`` (bootstrapped from the
server's first root, as enrollment hands it out) and asserts what the device
accepts or refuses.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from tuf.api.exceptions import ExpiredMetadataError, UnsignedMetadataError
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import JSONSerializer

from edgefleet_contract.errors import SigningError
from fleet_server.tuf import keys, offline
from fleet_server.tuf.repository import ONLINE_ROLES, TufRepository

from .ota_server import DIGITS, FIRMWARE, Clock, make_env


def _root_signer(data_dir: Path) -> keys.CryptoSigner:
    return keys.load(offline.key_file(data_dir / "offline", 1))


def test_pushed_model_is_a_verified_downloadable_target(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    pushed = env.push("model", DIGITS, env.login("olga"))
    assert pushed.status_code == 201, pushed.text
    target_path = pushed.json()["target_path"]
    assert target_path == "models/digits/1.0.0/digits-1.0.0-onnx-int8.efpkg"

    device = env.updater(tmp_path / "device")
    device.refresh()
    info = device.get_targetinfo(target_path)
    assert info is not None
    assert info.length == DIGITS.stat().st_size
    assert info.unrecognized_fields["custom"] == {
        "kind": "model",
        "name": "digits",
        "version": "1.0.0",
        "runtime": "onnx",
        "flavor": "onnx-int8",  # one meaning of "flavor" everywhere (it said "int8" before)
        "quantization": "int8",
    }
    downloaded = Path(device.download_target(info, str(tmp_path / "got.efpkg")))
    assert downloaded.read_bytes() == DIGITS.read_bytes()
    sha = hashlib.sha256(DIGITS.read_bytes()).hexdigest()
    # Consistent snapshots: versioned metadata and hash-prefixed target URLs.
    urls = device._fetcher.urls  # type: ignore[attr-defined]
    assert any(u.endswith("/tuf/metadata/timestamp.json") for u in urls)
    assert any(u.endswith(".snapshot.json") and "/metadata/1." not in u for u in urls)
    assert any(u.endswith(f"models/digits/1.0.0/{sha}.digits-1.0.0-onnx-int8.efpkg") for u in urls)


def test_firmware_target_carries_hardware(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    r = env.push("firmware", FIRMWARE / "edge-os-1.1.0.efbundle", env.login("olga"))
    assert r.status_code == 201, r.text
    device = env.updater(tmp_path / "device")
    device.refresh()
    info = device.get_targetinfo("firmware/edge-os/1.1.0/edge-os-1.1.0.efbundle")
    assert info is not None
    custom = info.unrecognized_fields["custom"]
    assert custom["kind"] == "firmware" and custom["hardware"] == ["rpi4", "rpi5"]


def test_versions_only_grow(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    before = (env.tuf.targets().signed.version, env.tuf.snapshot().signed.version)
    stamp = env.tuf.timestamp().signed.version
    env.push("model", DIGITS, env.login("olga"))
    assert env.tuf.targets().signed.version == before[0] + 1
    assert env.tuf.snapshot().signed.version == before[1] + 1
    assert env.tuf.timestamp().signed.version == stamp + 1
    assert env.tuf.metadata_file(f"{before[0]}.targets.json") is not None  # old ones stay
    assert env.tuf.metadata_file("../fleet.db") is None
    assert env.tuf.metadata_file("root.json") is None
    keys_dir = env.data_dir / "tuf" / "keys"
    assert keys_dir.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in keys_dir.iterdir())


def test_timestamp_resigning_keeps_clients_working(tmp_path: Path) -> None:
    # Everything was signed two days ago: the one-day timestamp has expired since.
    clock = Clock(offset=-2 * 86400)
    env = make_env(tmp_path, clock=clock)
    device = env.updater(tmp_path / "device")
    with pytest.raises(ExpiredMetadataError):
        device.refresh()
    clock.offset = 0.0
    assert env.tuf.refresh() == ["timestamp"]
    assert env.tuf.refresh() == []  # nothing is due any more
    assert env.tuf.next_refresh_in() > 3600
    env.updater(tmp_path / "device").refresh()  # the same device now accepts it


def test_stale_targets_are_resigned_with_their_snapshot(tmp_path: Path) -> None:
    clock = Clock(offset=-20 * 86400)
    env = make_env(tmp_path, clock=clock)
    env.push("model", DIGITS, env.login("olga"))
    clock.offset = 0.0
    assert env.tuf.refresh() == ["targets", "snapshot", "timestamp"]
    device = env.updater(tmp_path / "device")
    device.refresh()
    assert device.get_targetinfo("models/digits/1.0.0/digits-1.0.0-onnx-int8.efpkg") is not None


def _rotate(env_tuf: TufRepository, signers: list[keys.CryptoSigner], **kw: object) -> bytes:
    proposal = env_tuf.propose_root(**kw)  # type: ignore[arg-type]
    return offline.sign_root(proposal.to_bytes(JSONSerializer()), signers)


def test_online_key_rotation_keeps_clients_working(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    device_dir = tmp_path / "device"
    env.updater(device_dir).refresh()
    old = env.tuf.online_keys()

    signed = _rotate(env.tuf, [_root_signer(env.data_dir)], rotate=list(ONLINE_ROLES))
    # Until the new root is installed the old keys keep signing.
    assert env.tuf.online_keys() == old
    env.tuf.install_root(signed)
    new = env.tuf.online_keys()
    assert all(new[r].keyid != old[r].keyid for r in ONLINE_ROLES)
    assert not list((env.data_dir / "tuf" / "keys").glob("*.pending.pem"))

    env.push("model", DIGITS, env.login("olga"))
    device = env.updater(device_dir)  # the device still trusts root v1 on disk
    device.refresh()
    assert device._trusted_set.root.version == 2  # type: ignore[attr-defined]
    info = device.get_targetinfo("models/digits/1.0.0/digits-1.0.0-onnx-int8.efpkg")
    assert info is not None
    device.download_target(info, str(tmp_path / "m.efpkg"))

    # The server re-reads its keys from disk after a restart.
    restarted = TufRepository(env.data_dir / "tuf")
    assert restarted.online_keys() == new


def test_compromised_online_key_cannot_replace_root(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    device_dir = tmp_path / "device"
    env.updater(device_dir).refresh()
    # The attacker holds every online key and writes a root trusting only itself.
    stolen = [keys.load(env.data_dir / "tuf" / "keys" / f"{r}.pem") for r in ONLINE_ROLES]
    evil = env.tuf.root()
    evil.signed.version += 1
    for keyid in list(evil.signed.roles[Root.type].keyids):
        evil.signed.revoke_key(keyid, Root.type)
    evil.signed.add_key(stolen[0].public_key, Root.type)
    evil.signatures.clear()
    for signer in stolen:
        evil.sign(signer, append=True)
    data = evil.to_bytes(JSONSerializer())

    with pytest.raises(SigningError, match="0 valid signature"):
        env.tuf.install_root(data)
    (env.tuf.metadata_dir / "2.root.json").write_bytes(data)  # planted on the server's disk
    device = env.updater(device_dir)
    with pytest.raises(UnsignedMetadataError):
        device.refresh()
    trusted = Metadata[Root].from_file(str(device_dir / "metadata" / "root.json"))
    assert trusted.signed.version == 1


def test_root_threshold_is_enforced(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    ceremony = tmp_path / "airgap"
    new_keys = offline.make_root_keys(ceremony, count=3, threshold=2, passphrase=b"s3cret")
    demo = _root_signer(env.data_dir)
    loaded = [keys.load(offline.key_file(ceremony, i), passphrase=b"s3cret") for i in (1, 2, 3)]
    # Move the root to the 2-of-3 offline keys: signed by the old key and two new ones.
    to_offline = _rotate(
        env.tuf, [demo, loaded[0], loaded[1]], root_keys=new_keys, root_threshold=2
    )
    env.tuf.install_root(to_offline)
    assert env.tuf.root().signed.roles[Root.type].threshold == 2

    device_dir = tmp_path / "device"
    env.updater(device_dir).refresh()
    one = _rotate(env.tuf, [loaded[2]], rotate=["timestamp"])
    with pytest.raises(SigningError, match=r"1 valid signature.*2 are required"):
        env.tuf.install_root(one)
    (env.tuf.metadata_dir / "3.root.json").write_bytes(one)
    with pytest.raises(UnsignedMetadataError):
        env.updater(device_dir).refresh()
    (env.tuf.metadata_dir / "3.root.json").unlink()

    two = offline.sign_root(one, [loaded[0]])
    env.tuf.install_root(two)
    device = env.updater(device_dir)
    device.refresh()
    assert device._trusted_set.root.version == 3  # type: ignore[attr-defined]


def test_install_root_checks_version_and_keys(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    signer = _root_signer(env.data_dir)
    again = offline.sign_root(env.tuf.root_bytes(), [signer])
    with pytest.raises(SigningError, match="version 2 is expected"):
        env.tuf.install_root(again)
    with pytest.raises(SigningError, match="not TUF root metadata"):
        env.tuf.install_root(b"{}")
    # A root naming an online key the server does not hold would strand the fleet.
    foreign = env.tuf.propose_root()
    foreign.signed.revoke_key(foreign.signed.roles["timestamp"].keyids[0], "timestamp")
    foreign.signed.add_key(keys.generate().public_key, "timestamp")
    data = offline.sign_root(foreign.to_bytes(JSONSerializer()), [signer])
    with pytest.raises(SigningError, match="timestamp key is not held"):
        env.tuf.install_root(data)
    with pytest.raises(SigningError, match="not an online role"):
        env.tuf.propose_root(rotate=["root"])


def test_timer_resigns_an_expiring_timestamp(tmp_path: Path) -> None:
    from fleet_server.tuf.timer import ResignTimer

    clock = Clock(offset=-2 * 86400)
    env = make_env(tmp_path, clock=clock)
    before = env.tuf.timestamp().signed.version
    clock.offset = 0.0
    timer = ResignTimer(env.tuf)
    timer.start()
    try:
        deadline = time.monotonic() + 30
        while env.tuf.timestamp().signed.version == before and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        timer.stop()
    assert env.tuf.timestamp().signed.version == before + 1 and timer.resigned == 1
    env.updater(tmp_path / "device").refresh()
