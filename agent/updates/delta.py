"""Binary deltas: rebuild the new artifact from the one the device already has.

The server may offer ``GET /tuf/deltas/{from_sha256}/{to_sha256}``, a bsdiff4
patch.  Deltas are not signed; they need not be: the rebuilt file must match
the TUF target's signed length and SHA-256, and anything else (no delta, a
broken or hostile patch, a mismatch) falls back to the full download.

The patch is treated as hostile input: it may not be larger than the full
artifact, its declared output size must equal the signed length before any
work is done, and each bzip2 block is inflated with a ceiling, so a patch
cannot make the device allocate more than a few times the artifact size.
"""

from __future__ import annotations

import bz2
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import bsdiff4.core
import httpx

from .journal import write_atomic
from .targets import SignedTarget

log = logging.getLogger(__name__)

MAGIC = b"BSDIFF40"
WORTH_IT = 0.9
"""A delta is used only if it is at most this fraction of the full artifact."""


@dataclass(frozen=True)
class DeltaResult:
    outcome: Literal["used", "rejected", "unavailable"]
    transferred: int
    """Patch bytes received (0 when none was offered)."""
    reason: str = ""


def delta_url(server_url: str, from_sha256: str, to_sha256: str) -> str:
    return f"{server_url.rstrip('/')}/tuf/deltas/{from_sha256}/{to_sha256}"


def try_delta(
    client: httpx.Client,
    server_url: str,
    base: Path,
    base_sha256: str,
    target: SignedTarget,
    out: Path,
) -> DeltaResult:
    """Fetch a patch from ``base`` to ``target``, rebuild into ``out`` if it verifies."""
    if base_sha256 == target.sha256:
        return DeltaResult("unavailable", 0, "the device already has this artifact")
    url = delta_url(server_url, base_sha256, target.sha256)
    try:
        patch = _fetch_bounded(client, url, limit=target.length)
    except httpx.HTTPError as exc:
        return DeltaResult("unavailable", 0, f"delta fetch failed: {exc}")
    if patch is None:
        return DeltaResult("unavailable", 0, "the server offers no delta")
    if isinstance(patch, str):
        return DeltaResult("rejected", 0, patch)
    try:
        source = base.read_bytes()
        if hashlib.sha256(source).hexdigest() != base_sha256:
            return DeltaResult("rejected", len(patch), "the local base artifact changed on disk")
        rebuilt = apply_patch(source, patch, expected_size=target.length)
    except (OSError, ValueError) as exc:
        return DeltaResult("rejected", len(patch), f"the delta does not apply: {exc}")
    if len(rebuilt) != target.length or hashlib.sha256(rebuilt).hexdigest() != target.sha256:
        return DeltaResult(
            "rejected", len(patch), "the rebuilt artifact does not match the signed hash"
        )
    write_atomic(out, rebuilt)
    return DeltaResult("used", len(patch))


def _fetch_bounded(client: httpx.Client, url: str, *, limit: int) -> bytes | str | None:
    """The patch bytes, None for 404, or a reason string when it is unusable."""
    with client.stream("GET", url) as response:
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            return f"the delta endpoint answered HTTP {response.status_code}"
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit * WORTH_IT:
            # Rebuilding costs CPU and memory; below a 10% saving the full file is simpler.
            return f"the delta ({declared} bytes) saves too little over the full artifact"
        body = bytearray()
        for chunk in response.iter_bytes(64 * 1024):
            body += chunk
            if len(body) >= limit:
                return "the delta is not smaller than the full artifact"
        return bytes(body)


def apply_patch(source: bytes, patch: bytes, *, expected_size: int) -> bytes:
    """bsdiff4 ``patch`` applied to ``source``; refuses one not making ``expected_size`` bytes."""
    if len(patch) < 32 or patch[:8] != MAGIC:
        raise ValueError("not a bsdiff4 patch")
    len_control, len_diff, len_dst = (
        bsdiff4.core.decode_int64(patch[i : i + 8]) for i in (8, 16, 24)
    )
    if len_dst != expected_size:
        raise ValueError(f"the patch makes {len_dst} bytes, the signed target has {expected_size}")
    if min(len_control, len_diff) < 0 or 32 + len_control + len_diff > len(patch):
        raise ValueError("the patch header does not match its size")
    body = patch[32:]
    control = _inflate(body[:len_control], 24 * (expected_size + 1))
    diff = _inflate(body[len_control : len_control + len_diff], expected_size)
    extra = _inflate(body[len_control + len_diff :], expected_size)
    if len(control) % 24:
        raise ValueError("invalid control block")
    result: bytes = bsdiff4.core.patch(source, len_dst, control, diff, extra)
    return result


def _inflate(block: bytes, ceiling: int) -> bytes:
    decompressor = bz2.BZ2Decompressor()
    try:
        data = decompressor.decompress(block, max_length=ceiling + 1)
    except OSError as exc:
        raise ValueError(f"corrupt compressed block: {exc}") from exc
    if len(data) > ceiling:
        raise ValueError("a compressed block inflates past the artifact size")
    return data
