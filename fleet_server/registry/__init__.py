"""Artifact registry: model packages and firmware bundles, stored by hash and signed with TUF."""

from .blobs import BlobStore, TooLarge
from .deltas import DeltaCache
from .registry import ArtifactRegistry

__all__ = ["ArtifactRegistry", "BlobStore", "DeltaCache", "TooLarge"]
