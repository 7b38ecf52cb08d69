"""What a rollout needs to know about the artifact it ships, and who tells it.

The artifact registry (TUF targets) is another module's business; a rollout
depends only on :class:`ArtifactResolver`, so the registry can be swapped,
and tests can use a table.  A spec is what the operator types:
``digits@1.3.0`` or ``digits@1.3.0:onnx-int8`` (model flavour) or
``firmware:gw-image@2.1.0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from edgefleet_contract.messages import ArtifactKind, TargetRef

from ..store.base import Artifact


@dataclass(frozen=True)
class ResolvedArtifact:
    kind: ArtifactKind
    name: str
    version: str
    target_path: str
    """The TUF target path, e.g. ``models/digits/1.3.0/digits-1.3.0-onnx-int8.efpkg``."""
    sha256: str
    length: int

    @classmethod
    def of(cls, artifact: Artifact) -> ResolvedArtifact:
        """A registered artifact as the record a rollout stores (the fields it ships by)."""
        return cls(
            kind=artifact.kind,
            name=artifact.name,
            version=artifact.version,
            target_path=artifact.target_path,
            sha256=artifact.sha256,
            length=artifact.size,
        )

    def target_ref(self) -> TargetRef:
        return TargetRef(
            kind=self.kind, name=self.name, version=self.version, target=self.target_path
        )

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


class ArtifactResolver(Protocol):
    def resolve(self, spec: str) -> ResolvedArtifact:
        """The artifact ``spec`` names; raises ``NotFound`` (or ``PlanError``) if none."""
        ...


class ArtifactLookup(Protocol):
    def resolve(self, spec: str) -> Artifact: ...


@dataclass(frozen=True)
class RegistryResolver:
    """The artifact registry as a rollout sees it: a spec in, the shipped fields out."""

    registry: ArtifactLookup

    def resolve(self, spec: str) -> ResolvedArtifact:
        return ResolvedArtifact.of(self.registry.resolve(spec))
