"""Shared pieces of the device-side OTA tests: packages, a signed repository, a device."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.serving import ModelService
from agent.updates.health import HealthTally
from agent.updates.slots import ModelSlots
from agent.updates.trust import save_root
from agent.updates.updater import UpdatePolicy, Updater
from edgefleet_contract.messages import TargetRef
from edgefleet_contract.package import Manifest, pack_package, read_package

from .tuf_sim import RepoServer, TufRepo, sha256

DIST = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models"
BASE = DIST / "digits-1.0.0-onnx-float32.efpkg"


def package_bytes(version: str, *, broken_self_test: bool = False) -> bytes:
    """The reference digits package re-versioned (and optionally with a failing self-test)."""
    package = read_package(BASE)
    fields = package.manifest.model_dump()
    fields["version"] = version
    if broken_self_test:
        st = fields["self_test"]
        st["expected"] = [list(reversed(row)) for row in st["expected"]]
    manifest = Manifest.model_validate(fields)
    members = {k: v for k, v in package.members.items()}
    return pack_package(manifest, members)


def model_target(version: str) -> str:
    return f"models/digits/{version}/digits-{version}-onnx-float32.efpkg"


def model_custom(version: str) -> dict[str, object]:
    return {
        "kind": "model",
        "name": "digits",
        "version": version,
        "runtime": "onnx",
        "flavor": "onnx-float32",
        "quantization": "float32",
    }


def model_ref(version: str) -> TargetRef:
    return TargetRef(kind="model", name="digits", version=version, target=model_target(version))


@dataclass
class Device:
    data_dir: Path
    service: ModelService
    health: HealthTally
    updater: Updater
    reports: list[str]

    @property
    def serving(self) -> str:
        model = self.service.model
        return model.manifest.version if model else "none"


def make_device(
    data_dir: Path,
    server: RepoServer,
    *,
    initial: bytes | None = None,
    policy: UpdatePolicy | None = None,
    clock: Callable[[], float] | None = None,
    **kwargs: object,
) -> Device:
    """A device enrolled against ``server``'s repository, serving ``initial`` (v1.0.0)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "tuf" / "root.json").exists():
        save_root(data_dir, server.repo.root_json())
    slots = ModelSlots(data_dir)
    if slots.pointer() is None:
        first = data_dir / "first.efpkg"
        first.write_bytes(initial if initial is not None else package_bytes("1.0.0"))
        slots.install_initial(first)
        first.unlink()
    service = ModelService(recorder=None)
    active = slots.active()
    assert active is not None
    service.replace(active.package)
    health = HealthTally()
    reports: list[str] = []
    extra: dict[str, object] = dict(kwargs)
    if clock is not None:
        extra["clock"] = clock
    updater = Updater(
        data_dir,
        server.url,
        host=service,
        health=health,
        policy=policy or UpdatePolicy(probation_s=0.2, poll_s=0.02, min_inferences=5),
        on_change=lambda j: reports.append(j.phase),
        **extra,  # type: ignore[arg-type]
    )
    return Device(data_dir, service, health, updater, reports)


def publish_model(repo: TufRepo, version: str, data: bytes | None = None) -> bytes:
    data = data if data is not None else package_bytes(version)
    repo.add_target(model_target(version), data, model_custom(version))
    repo.publish()
    return data


def journal(data_dir: Path) -> dict[str, object]:
    doc = json.loads((data_dir / "updates" / "journal.json").read_text())
    assert isinstance(doc, dict)
    return doc


__all__ = ["RepoServer", "TufRepo", "sha256"]
