"""Chunked frames on ``devices/{id}/fl/in|out`` and their bounded reassembly.

A federated message (Flower's protobuf bytes) can be larger than the MQTT
payload limit a fleet runs with, so it travels as one or more frames::

    b"EFL1" | key (16 bytes) | index (u32 BE) | count (u32 BE) | total (u32 BE) | chunk

``key`` names the message (random per message), ``total`` is the size of the
whole message so a receiver can refuse an oversized one from its first frame.
Reassembly is bounded three ways (message size, messages in flight, age of a
partial message) and everything it drops is counted, never raised: a peer that
sends garbage costs a counter, not a crash.  Pure code, no I/O.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass, field

from .errors import ContractError

MAGIC = b"EFL1"
_HEADER = struct.Struct(">4s16sIII")
HEADER_SIZE = _HEADER.size
DEFAULT_MAX_MESSAGE = 64 << 20


def split(message: bytes, max_payload: int) -> list[bytes]:
    """Frames for ``message`` none of which exceeds ``max_payload`` bytes."""
    room = max_payload - HEADER_SIZE
    if room < 1:
        raise ContractError(f"an MQTT payload limit of {max_payload} bytes cannot carry frames")
    key = os.urandom(16)
    count = max(1, -(-len(message) // room))
    return [
        _HEADER.pack(MAGIC, key, i, count, len(message)) + message[i * room : (i + 1) * room]
        for i in range(count)
    ]


@dataclass
class _Partial:
    count: int
    total: int
    started: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class Reassembler:
    """Collects frames per sender into whole messages."""

    def __init__(
        self,
        *,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_partial: int = 64,
        timeout_s: float = 120.0,
    ) -> None:
        self.max_message = max_message
        self.max_partial = max_partial
        self.timeout_s = timeout_s
        self.dropped: Counter[str] = Counter()
        self._partial: dict[tuple[str, bytes], _Partial] = {}

    @property
    def pending(self) -> int:
        return len(self._partial)

    def feed(self, sender: str, frame: bytes, now: float) -> bytes | None:
        """The whole message once its last frame arrived; ``None`` while incomplete or dropped."""
        self.expire(now)
        if len(frame) < HEADER_SIZE or frame[:4] != MAGIC:
            self.dropped["malformed"] += 1
            return None
        _, key, index, count, total = _HEADER.unpack_from(frame)
        chunk = frame[HEADER_SIZE:]
        if count < 1 or index >= count or total > self.max_message:
            self.dropped["oversized" if total > self.max_message else "malformed"] += 1
            return None
        if count == 1:
            if len(chunk) != total:
                self.dropped["malformed"] += 1
                return None
            return chunk
        slot = (sender, key)
        partial = self._partial.get(slot)
        if partial is None:
            if len(self._partial) >= self.max_partial:
                oldest = min(self._partial, key=lambda k: self._partial[k].started)
                del self._partial[oldest]
                self.dropped["evicted"] += 1
            partial = self._partial[slot] = _Partial(count, total, now)
        if partial.count != count or partial.total != total:
            del self._partial[slot]
            self.dropped["malformed"] += 1
            return None
        if index not in partial.chunks:
            partial.chunks[index] = chunk
            partial.size += len(chunk)
        if partial.size > total:
            del self._partial[slot]
            self.dropped["malformed"] += 1
            return None
        if len(partial.chunks) < count:
            return None
        del self._partial[slot]
        message = b"".join(partial.chunks[i] for i in range(count))
        if len(message) != total:
            self.dropped["malformed"] += 1
            return None
        return message

    def expire(self, now: float) -> None:
        stale = [k for k, p in self._partial.items() if now - p.started > self.timeout_s]
        for slot in stale:
            del self._partial[slot]
            self.dropped["timeout"] += 1

    def forget(self, sender: str) -> None:
        """Drop a sender's partial messages (it went offline)."""
        for slot in [k for k in self._partial if k[0] == sender]:
            del self._partial[slot]
            self.dropped["sender_gone"] += 1
