"""Artifact registry: model packages and firmware bundles, stored by hash and signed with TUF."""

from .blobs import BlobStore, TooLarge
from .deltas import DeltaCache
from .registry import Registry

__all__ = ["BlobStore", "DeltaCache", "Registry", "TooLarge"]
