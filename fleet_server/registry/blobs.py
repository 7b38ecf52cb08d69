"""Content-addressed artifact files: ``{data_dir}/artifacts/sha256/ab/abcd...``.

A file's name is its SHA-256, so a stored artifact can never be changed in
place, two uploads of the same bytes share one file, and the TUF target URL
(which carries the hash) maps straight to a path.  Files arrive by rename from
a temp file in the same directory tree, so a crash never leaves a half-written
artifact under its final name.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

from edgefleet_contract.errors import StoreError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024


class TooLarge(StoreError):
    """An upload went past its size limit (the API answers 413)."""


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"

    def path(self, sha256: str) -> Path | None:
        """The stored file for ``sha256``, or None (also for anything that is not a hash)."""
        if not _SHA256.fullmatch(sha256):
            return None
        path = self.root / "sha256" / sha256[:2] / sha256
        return path if path.is_file() else None

    def put(self, source: Path, sha256: str) -> Path:
        """Link or copy ``source`` (whose hash the caller verified) into place atomically."""
        final = self.root / "sha256" / sha256[:2] / sha256
        if final.is_file():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=".incoming-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            tmp.chmod(0o644)
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot store artifact {sha256[:16]}...: {exc}") from exc
        return final

    @contextmanager
    def temp_file(self) -> Iterator[Path]:
        """A private temp path under the artifact root, removed afterwards."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="upload-")
        os.close(fd)
        path = Path(name)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)


async def receive(chunks: AsyncIterator[bytes], target: Path, *, limit: int) -> str:
    """Stream an upload into ``target``; returns its SHA-256 or raises :class:`TooLarge`."""
    digest = hashlib.sha256()
    size = 0
    with target.open("wb") as out:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"uploads are limited to {limit} bytes")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()
