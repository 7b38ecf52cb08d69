"""Bytes to models and back: the only place a wire payload is parsed.

:meth:`Codec.decode` never raises on bad input.  It returns either
:class:`Accepted` or :class:`Rejected` with a :class:`RejectReason`, and counts
every rejection so daemons can report them (telemetry, ``/metrics``).  Parsing
is a single pydantic pass over the raw bytes; the reason is recovered from the
validation error only on the (rare) failure path.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from pydantic import ValidationError

from . import topics
from .messages import WIRE, Command, CommandAck, Message, ReportedState, Status, Telemetry
from .topics import Channel

DEFAULT_MAX_PAYLOAD = 256 * 1024
"""Bytes; larger JSON payloads are refused before parsing (FL frames are chunked)."""

SCHEMAS: dict[Channel, type[Message]] = {
    Channel.TELEMETRY: Telemetry,
    Channel.STATE: ReportedState,
    Channel.STATUS: Status,
    Channel.ACK: CommandAck,
    Channel.CMD: Command,
}
"""The JSON schema of each channel; the ``fl/*`` channels carry binary frames."""

M = TypeVar("M", bound=Message)


class RejectReason(StrEnum):
    UNKNOWN_TOPIC = "unknown_topic"
    BINARY_CHANNEL = "binary_channel"
    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_VERSION = "missing_version"
    UNKNOWN_VERSION = "unknown_version"
    INVALID = "invalid"
    DEVICE_MISMATCH = "device_mismatch"


@dataclass(frozen=True, slots=True)
class Accepted(Generic[M]):
    device_id: str
    channel: Channel
    message: M


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectReason
    detail: str
    topic: str = ""

    def __str__(self) -> str:
        where = f" on {self.topic}" if self.topic else ""
        return f"rejected{where}: {self.reason.value}: {self.detail}"


class Codec:
    """Decodes and encodes wire payloads, counting rejections by reason."""

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._rejections: Counter[RejectReason] = Counter()
        self._lock = threading.Lock()

    @property
    def rejections(self) -> dict[RejectReason, int]:
        with self._lock:
            return dict(self._rejections)

    def encode(self, message: Message) -> bytes:
        return message.model_dump_json(exclude_none=True).encode()

    def decode(self, topic: str, payload: bytes) -> Accepted[Message] | Rejected:
        """Parse a message received on ``topic``; checks the topic's device id too."""
        parsed = topics.parse(topic)
        if parsed is None:
            return self._reject(RejectReason.UNKNOWN_TOPIC, "not a devices/{id}/... topic", topic)
        schema = SCHEMAS.get(parsed.channel)
        if schema is None:
            return self._reject(
                RejectReason.BINARY_CHANNEL, f"{parsed.channel.value} carries binary frames", topic
            )
        result = self.decode_as(schema, payload, topic=topic)
        if isinstance(result, Rejected):
            return result
        claimed = getattr(result, "device_id", parsed.device_id)
        if claimed != parsed.device_id:
            return self._reject(
                RejectReason.DEVICE_MISMATCH,
                f"payload claims device {claimed!r} on the topic of {parsed.device_id!r}",
                topic,
            )
        return Accepted(parsed.device_id, parsed.channel, result)

    def decode_as(self, schema: type[M], payload: bytes, *, topic: str = "") -> M | Rejected:
        """Parse ``payload`` as ``schema`` without a topic check."""
        if len(payload) > self.max_payload:
            return self._reject(
                RejectReason.TOO_LARGE,
                f"{len(payload)} bytes exceeds the limit of {self.max_payload}",
                topic,
            )
        try:
            return schema.model_validate_json(payload, context=WIRE)
        except ValidationError as exc:
            reason, detail = _explain(exc)
            return self._reject(reason, detail, topic)

    def _reject(self, reason: RejectReason, detail: str, topic: str) -> Rejected:
        with self._lock:
            self._rejections[reason] += 1
        return Rejected(reason, detail[:500], topic)


def _explain(exc: ValidationError) -> tuple[RejectReason, str]:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    kind = first.get("type", "")
    if kind == "json_invalid":
        return RejectReason.NOT_JSON, f"not valid JSON: {first.get('msg', '')}"
    if kind == "missing_version":
        return RejectReason.MISSING_VERSION, "no schema version field 'v'"
    if kind == "model_type" and not loc:
        return RejectReason.NOT_OBJECT, "the payload must be a JSON object"
    for err in errors:
        if tuple(err.get("loc", ())) == ("v",):
            if err.get("type") == "missing":
                return RejectReason.MISSING_VERSION, "no schema version field 'v'"
            return RejectReason.UNKNOWN_VERSION, "unsupported schema version (this reader knows v1)"
    where = ".".join(str(p) for p in loc) or "payload"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return RejectReason.INVALID, f"{where}: {first.get('msg', 'invalid')}{more}"
