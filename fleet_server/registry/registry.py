"""The artifact registry: validate, store, record and sign model packages and firmware bundles.

Adding an artifact is four steps, each safe to repeat: verify the file with
the same reader a device uses (:mod:`edgefleet_contract.package` /
:mod:`edgefleet_contract.firmware`; an ONNX package that declares int8 must also
hold int8 Conv/Gemm/MatMul weights), copy it into the content-addressed blob
store, record it in the store (where ``name@version:flavor`` means one set of
bytes forever), and publish it as a TUF target.  If the process dies between
steps, pushing the same file again finishes the job: the blob and the row are
found, and a missing or different TUF target is (re)published.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgefleet_contract import firmware, package
from edgefleet_contract.errors import EdgefleetError, NotFound, PackageError
from edgefleet_contract.messages import ArtifactKind

from ..store.base import Artifact, Store
from ..tuf import TufRepository
from .blobs import BlobStore
from .card import package_facts
from .cards import CardStore

_SPEC = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})@(?P<version>[0-9A-Za-z.+-]{1,64})"
    r"(?::(?P<flavor>[A-Za-z0-9_-]{1,32}))?$"
)
TARGET_DIRS: dict[ArtifactKind, str] = {"model": "models", "firmware": "firmware"}


class ArtifactRegistry:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        *,
        tuf: TufRepository | None = None,
        clock: Callable[[], float] = time.time,
        max_model_bytes: int = package.MAX_PACKAGE_BYTES,
        max_firmware_bytes: int = firmware.MAX_BUNDLE_BYTES,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.tuf = tuf
        self.clock = clock
        self.max_model_bytes = max_model_bytes
        self.max_firmware_bytes = max_firmware_bytes
        self.cards = CardStore(blobs.root / "cards")
        """Each model package's card facts, taken when it is registered."""
        self.on_added: list[Callable[[Artifact], None]] = []
        """Called with each registered artifact (the delta cache precomputes patches)."""

    # ------------------------------------------------------------- adding --

    def add_model(self, path: Path, *, lineage: Mapping[str, object], actor: str) -> Artifact:
        """Register the model package at ``path``; raises PackageError if it is unfit.

        ``lineage`` says where it came from: ``{"source": "upload"}`` or, for a
        federated candidate, ``{"source": "federated", "run_id": ..., "parent": ...}``.
        """
        pkg = package.read_package(path, max_bytes=self.max_model_bytes)
        m = pkg.manifest
        if not m.self_test.inputs:
            raise PackageError(f"{path.name}: the package has no self-test vectors")
        if m.runtime not in ("onnx", "tflite"):
            raise PackageError(f"{path.name}: unknown runtime {m.runtime!r}")
        from ..modelkit.quantize import check_int8_claim  # onnx is loaded on first upload

        check_int8_claim(pkg)
        filename = f"{m.name}-{m.version}-{m.flavor}{package.SUFFIX}"
        record = {
            "source": "upload",
            **dict(lineage),
            "package": m.lineage.model_dump(exclude_none=True),
        }
        record.setdefault("parent", m.lineage.parent)
        artifact = self._artifact(
            "model", m.name, m.version, m.flavor, m.runtime, (), pkg, filename, actor, record
        )
        # "flavor" means one thing everywhere: the manifest's runtime + quantization
        # ("onnx-int8"), as in the spec and the file name.  Targets signed before it
        # said "flavor": "int8"; no device reads that field, so they stay valid.
        custom = {
            "kind": "model",
            "name": m.name,
            "version": m.version,
            "runtime": m.runtime,
            "flavor": m.flavor,
            "quantization": m.quantization.dtype,
        }
        stored = self._register(path, artifact, custom)
        self.cards.save(stored.sha256, package_facts(pkg))  # the card's fixed half
        return stored

    def add_firmware(
        self, path: Path, *, lineage: Mapping[str, object] | None = None, actor: str
    ) -> Artifact:
        """Register the firmware bundle at ``path``; raises PackageError if it is unfit."""
        bundle = firmware.read_bundle(path, max_bytes=self.max_firmware_bytes)
        m = bundle.manifest
        record = {"source": "upload", **dict(lineage or {})}
        artifact = self._artifact(
            "firmware",
            m.name,
            m.version,
            "",
            None,
            tuple(m.hardware),
            bundle,
            bundle.filename,
            actor,
            record,
        )
        custom = {
            "kind": "firmware",
            "name": m.name,
            "version": m.version,
            "hardware": list(m.hardware),
            "handler": m.handler,
        }
        return self._register(path, artifact, custom)

    def _artifact(
        self,
        kind: ArtifactKind,
        name: str,
        version: str,
        flavor: str,
        runtime: str | None,
        hardware: tuple[str, ...],
        verified: package.ModelPackage | firmware.FirmwareBundle,
        filename: str,
        actor: str,
        lineage: dict[str, Any],
    ) -> Artifact:
        return Artifact(
            id=0,
            kind=kind,
            name=name,
            version=version,
            flavor=flavor,
            runtime=runtime,
            hardware=hardware,
            sha256=verified.sha256,
            size=verified.size,
            filename=filename,
            target_path=f"{TARGET_DIRS[kind]}/{name}/{version}/{filename}",
            created_at=self.clock(),
            uploaded_by=actor,
            lineage=lineage,
        )

    def _register(self, path: Path, artifact: Artifact, custom: Mapping[str, Any]) -> Artifact:
        self.blobs.put(path, artifact.sha256)
        stored = self.store.add_artifact(artifact)
        if self.tuf is not None:
            published = self.tuf.targets().signed.targets.get(stored.target_path)
            if published is None or published.hashes.get("sha256") != stored.sha256:
                self.tuf.add_target(
                    stored.target_path, length=stored.size, sha256=stored.sha256, custom=custom
                )
        for hook in self.on_added:
            hook(stored)
        return stored

    # ------------------------------------------------------------ reading --

    def get(self, artifact_id: int) -> Artifact:
        return self.store.get_artifact(artifact_id)

    def search(
        self,
        *,
        kind: str | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Artifact], int]:
        page = self.store.find_artifacts(kind=kind, name=name, limit=limit, offset=offset)
        return page.items, page.total

    def resolve_all(self, spec: str, *, kind: str | None = None) -> list[Artifact]:
        """Every artifact ``spec`` names (all flavours of ``name@version`` if none is given)."""
        match = _SPEC.fullmatch(spec.strip())
        if match is None:
            raise EdgefleetError(
                f"{spec!r} is not an artifact spec; write name@version or name@version:flavor "
                "(e.g. digits@1.3.0:onnx-int8)"
            )
        page = self.store.find_artifacts(
            kind=kind,
            name=match["name"],
            version=match["version"],
            flavor=match["flavor"],
            limit=1000,
        )
        if not page.items:
            raise NotFound(f"no artifact {spec} in the registry (`fleetctl models list`)")
        return page.items

    def resolve(self, spec: str, *, kind: str | None = None) -> Artifact:
        """The one artifact ``spec`` names; its ``target_path`` is the TUF target.

        ``name@version`` is enough when only one flavour (or a firmware bundle)
        exists; otherwise the error lists the flavours to choose from.
        """
        found = self.resolve_all(spec, kind=kind)
        if len(found) > 1:
            choices = ", ".join(sorted(f"{a.kind}:{a.flavor or '-'}" for a in found))
            raise EdgefleetError(f"{spec} names {len(found)} artifacts ({choices}); add :flavor")
        return found[0]

    def blob(self, sha256: str) -> Path | None:
        return self.blobs.path(sha256)
