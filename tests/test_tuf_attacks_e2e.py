"""TUF attacks end to end: the fleet server's own repository, tampered on disk, and a real agent.

One real ``fleet-server`` (its own :class:`TufRepository`, served by its own
``/tuf/`` routes) and one ``edge-agent run`` process, enrolled for real: the
trust anchor is the root the enroll answer carries, nothing is patched.  Each
attack edits the server's files the way someone with write access to its disk
(or a mirror of it) would, then asks the device for the affected version.  The
device must refuse: phase ``failed`` with the reason in the update report it
publishes (and in its log), still serving 1.0.0 from the same slot.  The last
test is the positive control: with the files put back, an untampered version
installs through the same path.

The device runs a 1.0.0 that was never pushed to this server, so no delta can
be built from it and every attacked target is fetched in full.  The positive
control therefore runs last (pytest keeps the file's order): once the device
runs a pushed version, later targets could come as deltas instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tuf.api.metadata import Metadata, Timestamp

from agent.updates.slots import ModelSlots
from fleet_server.config import ServerSettings
from fleet_server.server import FleetServer, initialize
from fleet_server.tuf import keys as tuf_keys

from .agentproc import AgentProcess
from .conftest import start_on_free_ports
from .harness import (
    ADMIN_PASSWORD,
    admin_token,
    enroll_agent,
    get_twin,
    put_desired,
    server_settings,
    wait_for,
)
from .ota_server import DIGITS, model_version

DEVICE = "tuf-e2e-1"


@contextmanager
def tampered(path: Path, change: Callable[[bytes], bytes]) -> Iterator[None]:
    """``path`` holds ``change(its bytes)`` inside the block and its own bytes again after,
    so an attack is undone for the next test even when this one fails."""
    good = path.read_bytes()
    path.write_bytes(change(good))
    try:
        yield
    finally:
        path.write_bytes(good)


@dataclass
class Fleet:
    server: FleetServer
    token: str
    agent: AgentProcess
    packages: Path

    @property
    def api(self) -> str:
        return self.server.settings.api_url

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def metadata(self) -> Path:
        return self.server.tuf.metadata_dir

    def push(self, version: str) -> tuple[str, str]:
        """Push digits ``version`` through the API; its TUF target path and sha256."""
        package = model_version(self.packages, version)
        r = httpx.post(
            f"{self.api}/api/v1/artifacts/models",
            content=package.read_bytes(),
            headers={**self.auth, "Content-Type": "application/octet-stream"},
            timeout=60,
        )
        assert r.status_code == 201, r.text
        doc = r.json()
        return str(doc["target_path"]), str(doc["sha256"])

    def reported(self) -> dict[str, Any]:
        r = get_twin(self.api, self.auth, DEVICE)
        r.raise_for_status()
        state: dict[str, Any] = r.json().get("reported") or {}
        return state

    def desire(self, version: str, target: str) -> None:
        model = {"name": "digits", "version": version, "target": target}
        r = put_desired(self.api, self.auth, DEVICE, {"model": model})
        r.raise_for_status()

    def outcome(self, target: str) -> dict[str, Any]:
        """Wait for the device's final word on ``target`` (committed or failed)."""

        def final() -> bool:
            update = self.reported().get("update") or {}
            return update.get("target") == target and update.get("phase") in (
                "committed",
                "failed",
            )

        wait_for(final, 180, f"the device's outcome for {target}")
        update: dict[str, Any] = self.reported()["update"]
        return update

    def refused(self, version: str, target: str, *words: str) -> str:
        """Ask for ``target``; assert it is refused for ``words`` and nothing changed."""
        before = self.reported()
        pointer = ModelSlots(self.agent.data_dir).pointer()
        self.desire(version, target)
        update = self.outcome(target)
        assert update["phase"] == "failed", update
        error = str(update.get("error") or "")
        for word in words:
            assert word.lower() in error.lower(), error
        after = self.reported()
        assert after["model"]["version"] == "1.0.0"
        assert after["slots"]["active"] == before["slots"]["active"]
        assert ModelSlots(self.agent.data_dir).pointer() == pointer
        assert not list(self.agent.data_dir.glob(f"models/*/digits-{version}-*"))  # not staged
        line = f"update to digits {version} failed: "

        def logged() -> bool:
            lines = self.agent.log.read_text().lower().splitlines()
            return any(line in x and all(w.lower() in x for w in words) for x in lines)

        wait_for(logged, 30, f"the agent's log line for {version}")
        return error


@pytest.fixture(scope="module")
def tuf_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("tuf-e2e")
    settings = server_settings(root / "server")
    assert isinstance(settings, ServerSettings)
    initialize(settings, admin_password=ADMIN_PASSWORD)
    server = start_on_free_ports(settings)
    try:
        token = admin_token(settings.api_url)
        data_dir = root / DEVICE
        enroll_agent(settings.api_url, token, DEVICE, data_dir, tags={})
        # The device's trust anchor is the server's real root, from the enroll answer.
        assert (data_dir / "tuf" / "root.json").read_bytes() == server.tuf.root_bytes()
        agent = AgentProcess(
            data_dir,
            DIGITS,
            EDGE_AGENT_TELEMETRY_INTERVAL_S="0.5",
            EDGE_AGENT_LOCAL_API__ENABLED="false",
            EDGE_AGENT_UPDATES__PROBATION_S="1",
        )
        packages = root / "packages"
        packages.mkdir()
        fleet = Fleet(server, token, agent, packages)
        try:
            wait_for(
                lambda: (fleet.reported().get("model") or {}).get("version") == "1.0.0",
                120,
                "the agent serving 1.0.0",
            )
            yield fleet
        finally:
            agent.stop()
    finally:
        server.stop()


def test_a_target_replaced_on_disk_is_refused(tuf_fleet: Fleet) -> None:
    target, sha256 = tuf_fleet.push("1.1.0")
    blob = tuf_fleet.server.artifacts.blob(sha256)
    assert blob is not None
    blob.chmod(0o600)

    def flipped(good: bytes) -> bytes:
        evil = bytearray(good)
        evil[len(evil) // 2] ^= 0xFF  # same length, other bytes
        return bytes(evil)

    with tampered(blob, flipped):
        tuf_fleet.refused("1.1.0", target, "does not match the signed", "refusing a tampered")


def test_a_target_grown_on_disk_is_refused_at_the_signed_length(tuf_fleet: Fleet) -> None:
    target, sha256 = tuf_fleet.push("1.6.0")
    blob = tuf_fleet.server.artifacts.blob(sha256)
    assert blob is not None
    blob.chmod(0o600)
    # endless data, as far as the device can tell
    with tampered(blob, lambda good: good + bytes(1 << 20)):
        tuf_fleet.refused("1.6.0", target, "more than the", "download refused")
        assert not list(tuf_fleet.agent.data_dir.glob("updates/*.part"))


def test_targets_metadata_edited_without_resigning_is_refused(tuf_fleet: Fleet) -> None:
    target, _ = tuf_fleet.push("1.2.0")
    version = tuf_fleet.server.tuf.targets().signed.version
    path = tuf_fleet.metadata / f"{version}.targets.json"

    def repointed(good: bytes) -> bytes:
        # Point the signed target at other bytes; the signature is left as it was.
        doc = json.loads(good)
        doc["signed"]["targets"][target]["hashes"]["sha256"] = "0" * 64
        return json.dumps(doc).encode()

    with tampered(path, repointed):
        tuf_fleet.refused("1.2.0", target, "TUF metadata refused", "targets was signed by 0/1")


def test_an_older_timestamp_put_back_is_refused(tuf_fleet: Fleet) -> None:
    path = tuf_fleet.metadata / "timestamp.json"
    old = path.read_bytes()
    target, _ = tuf_fleet.push("1.3.0")
    # The device sees the newer timestamp once (asking for a target that is not signed) ...
    missing = target.replace("1.3.0", "9.9.9")
    tuf_fleet.desire("9.9.9", missing)
    assert "not a signed target" in str(tuf_fleet.outcome(missing).get("error"))
    # ... then the older one comes back, hiding 1.3.0.
    with tampered(path, lambda _: old):
        tuf_fleet.refused("1.3.0", target, "TUF metadata refused", "timestamp version")


def test_an_older_snapshot_under_the_new_name_is_refused(tuf_fleet: Fleet) -> None:
    target, _ = tuf_fleet.push("1.4.0")
    version = tuf_fleet.server.tuf.snapshot().signed.version
    path = tuf_fleet.metadata / f"{version}.snapshot.json"
    older = tuf_fleet.metadata / f"{version - 1}.snapshot.json"
    with tampered(path, lambda _: older.read_bytes()):
        tuf_fleet.refused("1.4.0", target, "TUF metadata refused", "snapshot version")


def test_an_expired_timestamp_signed_with_the_servers_key_is_refused(tuf_fleet: Fleet) -> None:
    target, _ = tuf_fleet.push("1.5.0")
    path = tuf_fleet.metadata / "timestamp.json"

    def expired(good: bytes) -> bytes:
        # A freeze: valid signature by the server's own online key, but past its expiry.
        stale = Metadata[Timestamp].from_bytes(good)
        stale.signed.version += 1
        stale.signed.expires = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
        stale.sign(tuf_keys.load(tuf_fleet.server.tuf.keys_dir / "timestamp.pem"))
        return stale.to_bytes()

    with tampered(path, expired):
        tuf_fleet.refused("1.5.0", target, "TUF metadata refused", "timestamp.json is expired")


def test_positive_control_an_untampered_update_installs(tuf_fleet: Fleet) -> None:
    before = tuf_fleet.reported()["slots"]["active"]
    target, _ = tuf_fleet.push("1.9.0")
    tuf_fleet.desire("1.9.0", target)
    update = tuf_fleet.outcome(target)
    assert update["phase"] == "committed", update
    after = tuf_fleet.reported()
    assert after["model"]["version"] == "1.9.0"
    assert after["slots"]["active"] != before
