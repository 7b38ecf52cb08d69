"""Firmware updates: the A/B reference handler's try-boot protocol and the command handlers."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import bsdiff4

from agent.updates.firmware import ABSlotHandler, CommandHandler, InstallHandler
from agent.updates.journal import Journal
from agent.updates.updater import UpdatePolicy
from edgefleet_contract.firmware import pack_bundle, parse_bundle
from edgefleet_contract.messages import TargetRef

from .ota_device_kit import Device, make_device
from .tuf_sim import RepoServer, TufRepo, sha256

DIST = Path(__file__).resolve().parent.parent / "firmware_images" / "dist"


def bundle(version: str) -> bytes:
    return (DIST / f"edge-os-{version}.efbundle").read_bytes()


def fw_target(version: str) -> str:
    return f"firmware/edge-os/{version}/edge-os-{version}.efbundle"


def fw_ref(version: str) -> TargetRef:
    return TargetRef(kind="firmware", name="edge-os", version=version, target=fw_target(version))


def publish_firmware(
    repo: TufRepo, version: str, data: bytes | None = None, hardware: tuple[str, ...] = ("rpi4",)
) -> bytes:
    data = data if data is not None else bundle(version)
    custom = {"kind": "firmware", "name": "edge-os", "version": version, "hardware": list(hardware)}
    repo.add_target(fw_target(version), data, custom)
    repo.publish()
    return data


def fw_device(tmp_path: Path, repo_server: RepoServer, handler: InstallHandler) -> Device:
    return make_device(tmp_path / "dev", repo_server, firmware=handler, hardware="rpi4")


def test_ab_slot_update_commits(tmp_path: Path, repo_server: RepoServer) -> None:
    publish_firmware(repo_server.repo, "1.1.0")
    handler = ABSlotHandler(tmp_path / "fw", initial_version="1.0.0")
    device = fw_device(tmp_path, repo_server, handler)
    final = device.updater.run(fw_ref("1.1.0"), desired_version=3)
    assert final.phase == "committed", final.error
    assert handler.current_version() == "1.1.0"
    env = handler.env()
    assert env.boot_slot == "b" and env.booted == "b"
    assert not env.upgrade_available and env.bootcount == 0
    assert final.previous == "1.0.0"
    # A power cycle after the commit boots the committed slot.
    handler.boot_check()
    assert handler.current_version() == "1.1.0"
    assert device.serving == "1.0.0"  # a firmware update leaves the model alone


def test_second_firmware_update_uses_a_delta(tmp_path: Path, repo_server: RepoServer) -> None:
    first = publish_firmware(repo_server.repo, "1.1.0")
    handler = ABSlotHandler(tmp_path / "fw", initial_version="1.0.0")
    device = fw_device(tmp_path, repo_server, handler)
    assert device.updater.run(fw_ref("1.1.0"), desired_version=3).phase == "committed"
    image = bytearray(read_bundle_image(first))
    image[1000:1010] = b"patched!!!"  # a small firmware change
    second = pack_bundle({"name": "edge-os", "version": "1.2.0", "hardware": ["rpi4"]}, image)
    publish_firmware(repo_server.repo, "1.2.0", second)
    patch = bsdiff4.diff(first, second)
    repo_server.repo.deltas[(sha256(first), sha256(second))] = patch
    final = device.updater.run(fw_ref("1.2.0"), desired_version=4)
    assert final.phase == "committed", final.error
    assert final.delta == "used" and final.bytes_transferred == len(patch)
    assert len(patch) < len(second) // 10
    assert handler.current_version() == "1.2.0"


def read_bundle_image(data: bytes) -> bytes:
    return parse_bundle(data).image


def test_wrong_hardware_is_refused_before_download(tmp_path: Path, repo_server: RepoServer) -> None:
    publish_firmware(repo_server.repo, "1.1.0", hardware=("jetson-nano",))
    handler = ABSlotHandler(tmp_path / "fw", initial_version="1.0.0")
    device = fw_device(tmp_path, repo_server, handler)
    final = device.updater.run(fw_ref("1.1.0"), desired_version=3)
    assert final.phase == "failed"
    assert final.error is not None and "rpi4" in final.error and "hardware" in final.error
    assert not any(p.startswith("/tuf/targets/") for p, _ in repo_server.requests)
    assert handler.current_version() == "1.0.0"


def test_bundle_that_does_not_list_the_device_is_refused(
    tmp_path: Path, repo_server: RepoServer
) -> None:
    image = b"\x7fELF" + bytes(4096)
    data = pack_bundle({"name": "edge-os", "version": "1.2.0", "hardware": ["rpi5"]}, image)
    publish_firmware(repo_server.repo, "1.2.0", data, hardware=("rpi4",))  # metadata says rpi4 ...
    handler = ABSlotHandler(tmp_path / "fw", initial_version="1.0.0")
    device = fw_device(tmp_path, repo_server, handler)
    final = device.updater.run(fw_ref("1.2.0"), desired_version=3)
    assert final.phase == "failed"  # ... the bundle itself does not
    assert final.error is not None and "hardware" in final.error
    assert handler.current_version() == "1.0.0"


def test_bootloader_fallback_is_reported_as_rollback(
    tmp_path: Path, repo_server: RepoServer
) -> None:
    publish_firmware(repo_server.repo, "1.1.0")
    handler = ABSlotHandler(tmp_path / "fw", initial_version="1.0.0", bootlimit=0)
    device = fw_device(tmp_path, repo_server, handler)  # bootlimit 0: the new slot never comes up
    final = device.updater.run(fw_ref("1.1.0"), desired_version=3)
    assert final.phase == "rolled_back"
    assert final.error is not None and "fell back" in final.error
    assert handler.current_version() == "1.0.0"
    assert handler.env().boot_slot == "a"


def test_unhealthy_firmware_rolls_back(tmp_path: Path, repo_server: RepoServer) -> None:
    publish_firmware(repo_server.repo, "1.1.0")
    handler = ABSlotHandler(tmp_path / "fw", initial_version="1.0.0")
    device = fw_device(tmp_path, repo_server, handler)
    device.updater.policy = UpdatePolicy(probation_s=120, poll_s=0.02, min_inferences=5)

    def traffic() -> None:
        for _ in range(200):
            time.sleep(0.05)
            device.health.add(5, errors=5)

    def on_change(journal: Journal) -> None:
        if journal.phase == "probation" and not device.reports:
            device.reports.append("traffic")
            threading.Thread(target=traffic, daemon=True).start()

    device.updater.on_change = on_change
    final = device.updater.run(fw_ref("1.1.0"), desired_version=3)
    assert final.phase == "rolled_back"
    assert final.error is not None and "error rate" in final.error
    assert handler.current_version() == "1.0.0"
    env = handler.env()
    assert env.booted == "a" and not env.upgrade_available


def fake_client(tmp_path: Path, *, fail_step: str | None = None) -> Path:
    """An executable at the true edge: logs its argv, copies the image, fails when told."""
    script = tmp_path / "fake-update-client"
    log = tmp_path / "calls.log"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        f'if [ "$1" = "{fail_step or "-"}" ]; then echo "slot b: write error" >&2; exit 3; fi\n'
        f'if [ "$1" = "install" ]; then cp "$2" {tmp_path}/written.img; fi\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_command_handler_runs_the_board_client(tmp_path: Path, repo_server: RepoServer) -> None:
    data = bundle("1.1.0")
    publish_firmware(repo_server.repo, "1.1.0", data)
    exe = str(fake_client(tmp_path))
    handler = CommandHandler.preset(
        "mender",
        tmp_path / "fw",
        install=(exe, "install", "{image}"),
        commit=(exe, "commit"),
        rollback=(exe, "rollback"),
        reboot=(exe, "reboot"),
    )
    data = pack_bundle(
        {"name": "edge-os", "version": "1.2.0", "hardware": ["rpi4"], "handler": "mender"},
        b"MENDER" + bytes(2048),
    )
    publish_firmware(repo_server.repo, "1.2.0", data)
    device = fw_device(tmp_path, repo_server, handler)
    final = device.updater.run(fw_ref("1.2.0"), desired_version=3)
    assert final.phase == "committed", final.error
    calls = (tmp_path / "calls.log").read_text().split("\n")
    assert [c.split()[0] for c in calls if c] == ["install", "reboot", "commit"]
    assert (tmp_path / "written.img").read_bytes() == b"MENDER" + bytes(2048)
    assert handler.current_version() == "1.2.0"
    assert not list((tmp_path / "fw" / "incoming").iterdir())


def test_command_handler_failure_reaches_the_report(
    tmp_path: Path, repo_server: RepoServer
) -> None:
    exe = str(fake_client(tmp_path, fail_step="install"))
    handler = CommandHandler("rauc", tmp_path / "fw", {"install": (exe, "install", "{image}")})
    data = pack_bundle(
        {"name": "edge-os", "version": "1.2.0", "hardware": ["rpi4"], "handler": "rauc"},
        bytes(1024),
    )
    publish_firmware(repo_server.repo, "1.2.0", data)
    device = fw_device(tmp_path, repo_server, handler)
    final = device.updater.run(fw_ref("1.2.0"), desired_version=3)
    assert final.phase == "failed"
    assert final.error is not None and "exit 3" in final.error and "write error" in final.error
    assert handler.current_version() == "0.0.0"


def test_handler_mismatch_is_refused(tmp_path: Path, repo_server: RepoServer) -> None:
    publish_firmware(repo_server.repo, "1.1.0")  # an ab-slot bundle
    exe = str(fake_client(tmp_path))
    handler = CommandHandler("swupdate", tmp_path / "fw", {"install": (exe, "install", "{image}")})
    device = fw_device(tmp_path, repo_server, handler)
    final = device.updater.run(fw_ref("1.1.0"), desired_version=3)
    assert final.phase == "failed"
    assert final.error is not None and "ab-slot" in final.error
    assert not (tmp_path / "calls.log").exists()
    assert os.path.exists(tmp_path / "fw" / "version")
