"""Power cuts: SIGKILL a real device process at download, stage, switch and probation.

Each time the next start must boot into a model that loads and passes its
self-test, then finish the update or revert it cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime import Model
from agent.updates import active_model_path
from agent.updates.slots import ModelSlots

from .ota_device_kit import make_device, publish_model
from .tuf_sim import RepoServer, TufRepo

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server() -> Iterator[RepoServer]:
    srv = RepoServer(TufRepo())
    publish_model(srv.repo, "1.1.0")
    yield srv
    srv.close()


def child(data_dir: Path, server: RepoServer, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "tests.ota_kill_child", str(data_dir), server.url, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def boots_into(data_dir: Path) -> str:
    """What a fresh start would serve: the package must load and pass its self-test."""
    path = active_model_path(data_dir)
    assert path is not None
    return Model.load(path).manifest.version


def on_disk(data_dir: Path) -> str:
    """The model the slot pointer names right after the kill (before any recovery)."""
    slot = ModelSlots(data_dir).active(verify=True)
    assert slot is not None
    return Model.load(slot.package).manifest.version


def result(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("phase", ["downloading", "staging", "self_test", "switching"])
def test_kill_before_probation_then_finish(tmp_path: Path, server: RepoServer, phase: str) -> None:
    data_dir = tmp_path / "dev"
    make_device(data_dir, server)
    if phase == "downloading":
        server.faults.throttle_s = 0.05
    killed = child(data_dir, server, "--update", "1.1.0", "--kill-at", phase)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    server.faults.throttle_s = 0.0
    # Nothing before the switch touches the active slot; a kill while switching leaves a
    # self-tested new slot that boot completes the switch to and puts on probation.
    expected = "1.1.0" if phase == "switching" else "1.0.0"
    assert on_disk(data_dir) == "1.0.0"
    before = len(server.requests)
    resumed = result(child(data_dir, server))
    assert resumed["booted"] == expected
    assert resumed["phase"] == "committed", resumed
    assert resumed["serving"] == "1.1.0"
    assert boots_into(data_dir) == "1.1.0"
    if phase == "downloading":
        ranges = [r for p, r in server.requests[before:] if p.startswith("/tuf/targets/")]
        assert ranges and ranges[0] is not None and ranges[0].startswith("bytes=")
        assert ranges[0] != "bytes=0-"


def test_kill_during_probation_resumes_probation(tmp_path: Path, server: RepoServer) -> None:
    data_dir = tmp_path / "dev"
    make_device(data_dir, server)
    killed = child(data_dir, server, "--update", "1.1.0", "--kill-at", "probation")
    assert killed.returncode == -signal.SIGKILL
    resumed = result(child(data_dir, server))
    assert resumed["booted"] == "1.1.0"  # the switch had happened: the new slot is on trial
    assert resumed["phase"] == "committed", resumed
    assert resumed["restarts"] == 1
    assert boots_into(data_dir) == "1.1.0"


def test_repeated_restarts_during_probation_revert(tmp_path: Path, server: RepoServer) -> None:
    data_dir = tmp_path / "dev"
    make_device(data_dir, server)
    args = ("--max-restarts", "1", "--kill-at", "probation")
    assert child(data_dir, server, "--update", "1.1.0", *args).returncode == -signal.SIGKILL
    # Crashes again on the first restart (like a model that takes the process down) ...
    assert child(data_dir, server, *args).returncode == -signal.SIGKILL
    # ... so the next start gives up on it and boots the previous slot.
    resumed = result(child(data_dir, server, "--max-restarts", "1"))
    assert resumed["booted"] == "1.0.0"
    assert resumed["phase"] == "rolled_back"
    assert "restarted 2 times" in str(resumed["error"])
    assert resumed["serving"] == "1.0.0"
    assert boots_into(data_dir) == "1.0.0"


@pytest.mark.parametrize("phase", ["switching", "probation"])
def test_firmware_power_cut_while_switching_or_on_probation(
    tmp_path: Path, server: RepoServer, phase: str
) -> None:
    data = (ROOT / "firmware_images" / "dist" / "edge-os-1.1.0.efbundle").read_bytes()
    custom = {"kind": "firmware", "name": "edge-os", "version": "1.1.0", "hardware": ["rpi4"]}
    server.repo.add_target("firmware/edge-os/1.1.0/edge-os-1.1.0.efbundle", data, custom)
    server.repo.publish()
    data_dir = tmp_path / "dev"
    make_device(data_dir, server)
    killed = child(data_dir, server, "--firmware", "1.1.0", "--kill-at", phase)
    assert killed.returncode == -signal.SIGKILL
    env = json.loads((data_dir / "firmware" / "bootenv.json").read_text())
    assert env["boot_slot"] == "a"
    if phase == "probation":  # armed and booted into the trial slot when the power went
        assert env["upgrade_available"] and env["booted"] == "b"
    else:  # the try-boot had not been armed yet
        assert not env["upgrade_available"]
    # Power comes back: the switch is (re)done, the bootloader tries the new slot,
    # probation finishes.
    resumed = result(child(data_dir, server))
    assert resumed["phase"] == "committed", resumed
    assert resumed["firmware"] == "1.1.0"
    env = json.loads((data_dir / "firmware" / "bootenv.json").read_text())
    assert env["boot_slot"] == "b" and not env["upgrade_available"]
