"""The TUF attack list, each against the device's real TUF client and fetcher.

Every test ends the same way: the update is refused (phase ``failed``), the
device still serves 1.0.0 from the same slot, and the reason is in the
``UpdateReport.error`` the device publishes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from agent.updates.slots import ModelSlots

from .ota_device_kit import (
    Device,
    make_device,
    model_custom,
    model_ref,
    model_target,
    package_bytes,
    publish_model,
)
from .tuf_sim import RepoServer, sha256


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def device(tmp_path: Path, repo_server: RepoServer, clock: Clock) -> Device:
    return make_device(tmp_path / "dev", repo_server, clock=clock)


def refused(device: Device, version: str, *words: str) -> str:
    pointer = ModelSlots(device.data_dir).pointer()
    final = device.updater.run(model_ref(version), desired_version=5)
    report = device.updater.report()
    assert final.phase == "failed", final
    assert report is not None and report.phase == "failed" and report.error
    for word in words:
        assert word.lower() in report.error.lower(), report.error
    assert device.serving == "1.0.0"
    assert ModelSlots(device.data_dir).pointer() == pointer
    return report.error


def artifact_path(repo_server: RepoServer, version: str, data: bytes) -> str:
    directory, _, basename = model_target(version).rpartition("/")
    return f"targets/{directory}/{sha256(data)}.{basename}"


def test_tampered_artifact(device: Device, repo_server: RepoServer) -> None:
    data = publish_model(repo_server.repo, "1.1.0")
    evil = bytearray(data)
    evil[len(evil) // 2] ^= 0xFF
    repo_server.faults.override[artifact_path(repo_server, "1.1.0", data)] = bytes(evil)
    refused(device, "1.1.0", "does not match the signed")


def test_artifact_signed_by_a_wrong_key(device: Device, repo_server: RepoServer) -> None:
    repo_server.repo.add_target(model_target("1.1.0"), b"evil", {"kind": "model"})
    repo_server.repo.publish(targets_signers=[CryptoSigner.generate_ed25519()])
    refused(device, "1.1.0", "TUF metadata refused", "targets")


def test_artifact_signed_by_a_revoked_key(device: Device, repo_server: RepoServer) -> None:
    publish_model(repo_server.repo, "1.1.0")
    assert device.updater.run(model_ref("1.1.0"), desired_version=2).phase == "committed"
    device.updater.run(model_ref("1.0.0"), desired_version=3)  # unknown target: refused
    old = repo_server.repo.signers["targets"]
    repo_server.repo.rotate_root(change={"targets": [CryptoSigner.generate_ed25519()]})
    # The holder of the revoked key signs a new targets role with a malicious target.
    repo_server.repo.add_target(model_target("1.2.0"), b"evil", {"kind": "model"})
    repo_server.repo.publish(targets_signers=old)
    pointer = ModelSlots(device.data_dir).pointer()
    final = device.updater.run(model_ref("1.2.0"), desired_version=4)
    assert final.phase == "failed" and final.error and "TUF metadata refused" in final.error
    assert device.serving == "1.1.0"
    assert ModelSlots(device.data_dir).pointer() == pointer


def test_replay_of_older_metadata(device: Device, repo_server: RepoServer) -> None:
    publish_model(repo_server.repo, "1.1.0")
    old_timestamp = repo_server.repo.history["timestamp"][-1]
    publish_model(repo_server.repo, "1.2.0")
    # The device sees the newer metadata once (refusing an unrelated bad target) ...
    device.updater.run(model_ref("9.9.9"), desired_version=2)
    # ... then an attacker replays the older timestamp to hide 1.2.0 and pin 1.1.0.
    repo_server.faults.override["metadata/timestamp.json"] = old_timestamp
    refused(device, "1.1.0", "TUF metadata refused", "version")


def test_freeze_attack_detected_once_the_timestamp_expires(
    device: Device, repo_server: RepoServer, clock: Clock
) -> None:
    expires = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    repo_server.repo.add_target(
        model_target("1.1.0"), package_bytes("1.1.0"), model_custom("1.1.0")
    )
    repo_server.repo.publish(timestamp_expires=expires)
    device.updater.run(model_ref("9.9.9"), desired_version=2)  # fresh metadata is accepted
    assert "not a signed target" in (device.updater.report().error or "")  # type: ignore[union-attr]
    clock.offset = 2 * 3600  # the server keeps serving the same timestamp, forever
    refused(device, "1.1.0", "expired")


def test_mix_and_match_of_metadata_versions(device: Device, repo_server: RepoServer) -> None:
    publish_model(repo_server.repo, "1.1.0")
    first_targets = repo_server.repo.history["targets"][-1]
    publish_model(repo_server.repo, "1.2.0")
    version = repo_server.repo.targets.signed.version
    # Snapshot says targets v2; the attacker serves the v1 targets under that name.
    repo_server.faults.override[f"metadata/{version}.targets.json"] = first_targets
    refused(device, "1.2.0", "TUF metadata refused", "version")


def test_oversized_target_endless_data(device: Device, repo_server: RepoServer) -> None:
    publish_model(repo_server.repo, "1.1.0")
    repo_server.faults.endless = True
    refused(device, "1.1.0", "more than the", "bytes")
    assert not list((device.data_dir / "updates").glob("*.part"))


def test_metadata_signed_by_fewer_keys_than_the_threshold(
    device: Device, repo_server: RepoServer
) -> None:
    keys = [CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()]
    repo_server.repo.rotate_root(change={"targets": keys}, threshold={"targets": 2})
    repo_server.repo.add_target(model_target("1.1.0"), b"evil", {"kind": "model"})
    repo_server.repo.publish(targets_signers=keys[:1])
    refused(device, "1.1.0", "TUF metadata refused", "targets")


def test_compromised_online_key_cannot_replace_root(
    device: Device, repo_server: RepoServer
) -> None:
    online = repo_server.repo.signers["timestamp"][0]
    attacker = CryptoSigner.generate_ed25519()
    # A new root that hands the root role to the attacker, signed with the online key.
    repo_server.repo.rotate_root(signers_old=[online], change={"root": [attacker]})
    publish_model(repo_server.repo, "1.1.0")
    refused(device, "1.1.0", "TUF metadata refused", "root")
    assert not (device.data_dir / "tuf" / "root_history" / "2.root.json").exists()
