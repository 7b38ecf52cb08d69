"""What a rollout needs to know about the artifact it ships, and who tells it.

The artifact registry (TUF targets) is another module's business; a rollout
depends only on :class:`ArtifactResolver`, so the registry can be swapped,
and tests can use a table.  A spec is what the operator types:
``digits@1.3.0`` or ``digits@1.3.0:onnx-int8`` (model flavour) or
``firmware:gw-image@2.1.0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from edgefleet_contract.messages import TargetRef

Kind = Literal["model", "firmware"]


@dataclass(frozen=True)
class ResolvedArtifact:
    kind: Kind
    name: str
    version: str
    target_path: str
    """The TUF target path, e.g. ``models/digits/1.3.0/digits-1.3.0-onnx-int8.efpkg``."""
    sha256: str
    length: int

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


def as_resolved(found: Any) -> ResolvedArtifact:
    """Whatever a registry returned, as the record a rollout stores.

    The registry's own artifact type carries more (lineage, timestamps); a
    rollout keeps only the fields it needs, so any object with them will do.
    """
    if isinstance(found, ResolvedArtifact):
        return found
    return ResolvedArtifact(
        kind=found.kind,
        name=found.name,
        version=found.version,
        target_path=found.target_path,
        sha256=found.sha256,
        length=int(found.length if hasattr(found, "length") else found.size),
    )
