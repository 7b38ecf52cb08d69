"""Binary deltas between stored artifacts (bsdiff4), made on first request and cached.

A device that runs artifact ``from`` and should run ``to`` asks for
``/tuf/deltas/{from}/{to}``; it rebuilds ``to`` locally and verifies it against
the TUF target's length and hash, so a delta needs no signature of its own: a
wrong patch only costs the device a full download.  A patch that is not smaller
than the target is not worth sending; that answer is cached too (as an empty
``.none`` marker), so the diff is never recomputed.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import bsdiff4

from .blobs import BlobStore

MAX_DELTA_INPUT = 256 * 1024 * 1024
"""bsdiff holds both files and a suffix array in memory; bigger artifacts get no delta."""


class DeltaCache:
    def __init__(self, blobs: BlobStore, directory: Path) -> None:
        self.blobs = blobs
        self.directory = directory
        self._lock = threading.Lock()
        self._busy: dict[tuple[str, str], threading.Lock] = {}

    def patch(self, source: str, target: str) -> Path | None:
        """The patch file turning ``source`` into ``target``, or None if there is none."""
        old, new = self.blobs.path(source), self.blobs.path(target)
        if old is None or new is None or source == target:
            return None
        stem = self.directory / f"{source}-{target}"
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
            return patch if worth_it else None

    def _store(self, path: Path, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.directory, prefix=".delta-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(name, path)
