"""A shadow run's candidate comes through TUF like an install, and nothing switches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.config import AgentSettings
from agent.serving import ModelService
from agent.updates.service import DeviceUpdates
from agent.updates.trust import save_root
from edgefleet_contract.messages import DesiredState

from .harness import wait_for
from .ota_device_kit import model_ref, model_target, package_bytes, publish_model
from .tuf_sim import RepoServer, sha256


def _device(tmp_path: Path, repo_server: RepoServer) -> tuple[ModelService, DeviceUpdates]:
    data_dir = tmp_path / "dev"
    save_root(data_dir, repo_server.repo.root_json())
    first = tmp_path / "first.efpkg"
    first.write_bytes(package_bytes("1.0.0"))
    settings = AgentSettings(
        data_dir=data_dir,
        hardware="rpi4",
        updates={"server_url": repo_server.url},  # type: ignore[arg-type]
    )
    service = ModelService(recorder=None)
    updates = DeviceUpdates(settings, "http://unused", service, on_change=lambda: None)
    boot = updates.boot_model_path(first)
    assert boot is not None
    service.replace(boot)
    return service, updates


def test_shadow_candidate_is_verified_staged_apart_and_never_switched(
    tmp_path: Path, repo_server: RepoServer
) -> None:
    publish_model(repo_server.repo, "1.1.0")
    service, updates = _device(tmp_path, repo_server)
    slots_before = updates.slots()
    updates.start()
    try:
        updates.submit(DesiredState(version=2, shadow=model_ref("1.1.0")))
        wait_for(lambda: service.shadow is not None, 60, "the shadow model")
        assert service.shadow is not None and service.shadow.label == "digits@1.1.0"
        assert service.model is not None and service.model.manifest.version == "1.0.0"
        assert updates.slots() == slots_before  # the A/B slots (and the rollback) untouched
        x = np.load(Path(__file__).with_name("data") / "digits_holdout.npz")["x"][:20]
        for row in x.astype(np.float32):
            service.predict(row)
        service.shadow.idle()
        stats = service.shadow_snapshot()
        assert stats is not None and stats.samples == 20 and stats.version == "1.1.0"
        assert stats.agreed == 20  # the same weights re-versioned: they agree everywhere
        # A desired state without the shadow ends the run; the active model keeps serving.
        updates.submit(DesiredState(version=3))
        assert service.shadow is None
        assert service.model.manifest.version == "1.0.0"
    finally:
        updates.stop()


def test_tampered_shadow_candidate_is_refused(
    tmp_path: Path, repo_server: RepoServer, caplog: pytest.LogCaptureFixture
) -> None:
    data = publish_model(repo_server.repo, "1.1.0")
    evil = bytearray(data)
    evil[len(evil) // 2] ^= 0xFF
    directory, _, basename = model_target("1.1.0").rpartition("/")
    repo_server.faults.override[f"targets/{directory}/{sha256(data)}.{basename}"] = bytes(evil)
    service, updates = _device(tmp_path, repo_server)
    caplog.set_level("ERROR", logger="agent.updates.service")
    updates.start()
    try:
        updates.submit(DesiredState(version=2, shadow=model_ref("1.1.0")))
        wait_for(
            lambda: any("in the shadow" in r.getMessage() for r in caplog.records), 60, "the log"
        )
        assert service.shadow is None
        assert service.model is not None and service.model.manifest.version == "1.0.0"
        assert not list((tmp_path / "dev" / "updates" / "shadow").glob("*.efpkg"))
    finally:
        updates.stop()
