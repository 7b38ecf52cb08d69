"""Binary deltas between stored artifacts (bsdiff4), made when an artifact is registered.

A device that runs artifact ``from`` and should run ``to`` asks for
``/tuf/deltas/{from}/{to}``; it rebuilds ``to`` locally and verifies it against
the TUF target's length and hash, so a delta needs no signature of its own: a
wrong patch only costs the device a full download.

``/tuf/deltas`` is public (devices hold no API credential), so a request never
computes anything: it is answered from the cache or 404, and the device falls
back to the full target.  Patches are made in the background when an artifact
is registered, from each of the ``keep_versions`` versions before it of the same
name and kind (what a fleet actually runs), by at most ``workers`` threads with
at most ``max_pending`` waiting (more are dropped and counted).  The cache keeps
at most ``max_bytes`` on disk, oldest out first.  A patch that is not smaller
than the target is not worth sending; that answer is cached too (as an empty
``.none`` marker), so the diff is never recomputed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

import bsdiff4

from .blobs import BlobStore

if TYPE_CHECKING:
    from ..store.base import Artifact
    from .registry import ArtifactRegistry

log = logging.getLogger(__name__)

MAX_DELTA_INPUT = 64 * 1024 * 1024
"""bsdiff holds both files and a suffix array in memory (~10x the input); bigger
artifacts get no delta."""


class DeltaCache:
    def __init__(
        self,
        blobs: BlobStore,
        directory: Path,
        *,
        workers: int = 1,
        max_pending: int = 16,
        max_bytes: int = 4 * 1024**3,
        keep_versions: int = 3,
    ) -> None:
        self.blobs = blobs
        self.directory = directory
        self.max_bytes = max_bytes
        self.keep_versions = keep_versions
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._busy: dict[tuple[str, str], threading.Lock] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="delta")
        self._pending: set[Future[Path | None]] = set()
        self.dropped = 0
        """Patches not scheduled because ``max_pending`` were already waiting."""
        self.evicted = 0
        """Cached patches deleted to keep the cache under ``max_bytes``."""

    def patch(self, source: str, target: str) -> Path | None:
        """The cached patch turning ``source`` into ``target``, or None (never computes)."""
        if self.blobs.path(source) is None or self.blobs.path(target) is None:
            return None
        found = self._stem(source, target).with_suffix(".bsdiff")
        return found if found.is_file() else None

    def schedule(self, sources: Sequence[str], target: str) -> int:
        """Queue patches from each of ``sources`` to ``target``; returns how many were queued."""
        queued = 0
        for source in sources:
            with self._lock:
                self._pending = {f for f in self._pending if not f.done()}
                if len(self._pending) >= self._max_pending:
                    self.dropped += 1
                    log.warning("delta %s -> %s dropped: queue full", source[:12], target[:12])
                    continue
                future = self._pool.submit(self._compute_logged, source, target)
                self._pending.add(future)
            queued += 1
        return queued

    def wait(self, timeout: float | None = None) -> None:
        """Block until every scheduled patch is made (for tests and benchmarks)."""
        with self._lock:
            pending = set(self._pending)
        wait(pending, timeout=timeout)

    def on_registered(self, registry: ArtifactRegistry) -> Callable[[Artifact], None]:
        """The hook for :attr:`ArtifactRegistry.on_added`: patches from the versions before it."""

        def added(artifact: Artifact) -> None:
            earlier = registry.store.find_artifacts(
                kind=artifact.kind,
                name=artifact.name,
                flavor=artifact.flavor,
                limit=self.keep_versions + 1,
            ).items
            sources = [a.sha256 for a in earlier if a.sha256 != artifact.sha256]
            self.schedule(sources[: self.keep_versions], artifact.sha256)

        return added

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def compute(self, source: str, target: str) -> Path | None:
        """Make (or find) the patch from ``source`` to ``target``; None if not worth it."""
        old, new = self.blobs.path(source), self.blobs.path(target)
        if old is None or new is None or source == target:
            return None
        stem = self._stem(source, target)
        patch, none = stem.with_suffix(".bsdiff"), stem.with_suffix(".none")
        with self._lock:
            pair = self._busy.setdefault((source, target), threading.Lock())
        with pair:  # one computation per pair; later callers wait and read the cache
            if patch.is_file():
                return patch
            if none.is_file():
                return None
            if max(old.stat().st_size, new.stat().st_size) > MAX_DELTA_INPUT:
                return None
            data = bsdiff4.diff(old.read_bytes(), new.read_bytes())
            worth_it = len(data) < new.stat().st_size
            self._store(patch if worth_it else none, data if worth_it else b"")
        with self._lock:
            self._busy.pop((source, target), None)
        self._evict()
        return patch if worth_it and patch.is_file() else None

    def _compute_logged(self, source: str, target: str) -> Path | None:
        try:
            return self.compute(source, target)
        except Exception:
            log.exception("delta %s -> %s failed", source[:12], target[:12])
            return None

    def _stem(self, source: str, target: str) -> Path:
        return self.directory / f"{source}-{target}"

    def _store(self, path: Path, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.directory, prefix=".delta-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(name, path)

    def _evict(self) -> None:
        """Delete the oldest patches until the cache is within ``max_bytes``."""
        files = []
        for path in self.directory.glob("*.bsdiff"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            self.evicted += 1
