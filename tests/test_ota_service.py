"""The daemon's update service: the worker thread, persisted desired state, reported fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentSettings
from agent.serving import ModelService
from agent.updates.service import DeviceUpdates, make_handler
from agent.updates.trust import save_root
from edgefleet_contract.errors import ConfigError
from edgefleet_contract.messages import DesiredState

from .harness import wait_for
from .ota_device_kit import model_ref, package_bytes, publish_model
from .tuf_sim import RepoServer


def settings(data_dir: Path, repo_server: RepoServer, **updates: object) -> AgentSettings:
    return AgentSettings(
        data_dir=data_dir,
        hardware="rpi4",
        updates={"server_url": repo_server.url, "probation_s": 0.1, **updates},  # type: ignore[arg-type]
    )


def test_persisted_desired_state_is_carried_out_once(
    tmp_path: Path, repo_server: RepoServer
) -> None:
    publish_model(repo_server.repo, "1.1.0")
    data_dir = tmp_path / "dev"
    save_root(data_dir, repo_server.repo.root_json())
    first = tmp_path / "first.efpkg"
    first.write_bytes(package_bytes("1.0.0"))
    desired = DesiredState(version=4, model=model_ref("1.1.0"))

    service = ModelService(recorder=None)
    changes: list[int] = []
    updates = DeviceUpdates(
        settings(data_dir, repo_server),
        "http://unused",
        service,
        on_change=lambda: changes.append(1),
    )
    boot = updates.boot_model_path(first)
    assert boot is not None and boot.parent.name == "a"  # first boot: bundled model into slot a
    service.replace(boot)
    # The ack for version 4 went out, then the power went: only desired.json remembers it.
    updates.start(desired)
    try:
        wait_for(
            lambda: (r := updates.report()) is not None and r.phase == "committed", 60, "commit"
        )
    finally:
        updates.stop()
    assert service.model is not None and service.model.manifest.version == "1.1.0"
    assert changes  # every phase was re-published
    assert updates.slots()["active"] == "b"
    firmware = updates.firmware_ref()
    assert firmware is not None and firmware.version == "0.0.0" and firmware.slot == "a"

    # Next start with the same persisted desired state: nothing to do, nothing fetched.
    before = len(repo_server.requests)
    again = DeviceUpdates(settings(data_dir, repo_server), "http://unused", service, on_change=list)
    again.start(desired)
    again.stop()
    assert len(repo_server.requests) == before


def test_unknown_firmware_command_step_is_a_config_error(
    tmp_path: Path, repo_server: RepoServer
) -> None:
    bad = settings(
        tmp_path, repo_server, firmware_handler="rauc", firmware_commands={"flash": ["dd"]}
    )
    with pytest.raises(ConfigError, match="flash"):
        make_handler(bad)
    assert make_handler(settings(tmp_path, repo_server, firmware_handler="none")) is None
