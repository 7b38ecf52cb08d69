"""A deterministic sample firmware image that looks like a real one to a delta tool.

Real images are mostly already-compressed filesystems: high-entropy bytes where
a release touches a few regions and leaves the rest byte-identical.  The
sample reproduces that shape without shipping megabytes: a small header with
the version, then pseudo-random blocks from a fixed seed, of which a release
rewrites a handful (more for bigger version jumps).  So 1.0.0 and 1.1.0 share
almost every byte, and a binary delta between them is small but not trivial.
"""

from __future__ import annotations

import hashlib

from edgefleet_contract.errors import PackageError

DEFAULT_SIZE = 128 * 1024
BLOCK = 512
_SEED = b"edgefleet-sample-firmware"
_MAGIC = b"EFIMG1\0"


def _stream(label: bytes, size: int) -> bytes:
    return hashlib.shake_256(_SEED + b"/" + label).digest(size)


def _release_index(version: str) -> int:
    """How many regions differ from the 1.0.0 base: ``10 * minor + patch`` (+100 per major)."""
    core = version.split("+", 1)[0].split("-", 1)[0]
    try:
        major, minor, patch = (int(part) for part in core.split("."))
    except ValueError as exc:
        raise PackageError(f"{version!r} is not a semantic version (x.y.z)") from exc
    return 100 * max(major - 1, 0) + 10 * minor + patch


def sample_image(version: str, *, size: int = DEFAULT_SIZE) -> bytes:
    """The sample image of ``version``: a header, then seeded blocks, some rewritten per release."""
    if size < 16 * BLOCK:
        raise PackageError(f"a sample image needs at least {16 * BLOCK} bytes")
    header = (_MAGIC + version.encode()).ljust(BLOCK, b"\0")
    image = bytearray(header + _stream(b"base", size - BLOCK))
    blocks = (size - BLOCK) // BLOCK
    for i in range(_release_index(version)):
        # Which block release i rewrites is fixed, so every later release keeps earlier changes.
        pick = int.from_bytes(_stream(b"pick-%d" % i, 4), "big") % blocks
        start = BLOCK + pick * BLOCK
        image[start : start + BLOCK] = _stream(b"release-%d" % i, BLOCK)
    return bytes(image)
