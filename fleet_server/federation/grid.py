"""Flower's ``Grid`` over the server's MQTT session.

A stock Flower strategy drives rounds through four calls (``get_node_ids``,
``push_messages``, ``pull_messages``, ``send_and_receive``); this class answers
them by publishing each instruction on ``devices/{id}/fl/in`` (chunked to the
payload limit) and collecting replies that arrive on ``devices/{id}/fl/out``.
On the wire the messages are edgefleet's native envelopes (:mod:`.wire`), so a
device trains without Flower; a device that cannot take part answers at once
with a reason code, which the round's failures count (``Exchange.failed`` keeps
each device's reason).

Why not Flower's SuperLink: its polling runtime costs seconds per round and
notices a dead node after a minute.  Here a device's Last Will (status offline)
turns every reply it still owes into an immediate error reply, so a round goes
on with the others instead of waiting for its timeout.

Replies are checked before a strategy can see them: a reply must come from the
device the instruction went to, and a ``validator`` (see :mod:`.validate`)
turns a malformed or hostile update into an error reply, counted by reason.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import Error, Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from edgefleet_common import flower_compat
from edgefleet_contract import flframes, flwire
from edgefleet_contract.codec import DEFAULT_MAX_PAYLOAD
from edgefleet_contract.errors import ContractError, EdgefleetError, RunStopped

from . import wire
from .validate import UpdateCheck, numpy_arrays

log = logging.getLogger(__name__)

Sender = Callable[[str, bytes], None]
ClosePolicy = Callable[["Exchange", float], bool]
"""(exchange so far, seconds since sent) -> close now; see :mod:`.deadline`."""

REUSE_IDS_S = 1.0
"""Flower's strategies ask ``get_node_ids`` twice while configuring one round; the second
call within this long (and before anything is sent) reuses the first answer, since at
thousands of devices one eligibility census costs a noticeable part of a round."""

ERR_OFFLINE = 901
ERR_REJECTED = 902
ERR_UNREACHABLE = 903


def node_id_for(device_id: str) -> int:
    """A stable positive 63-bit node id per device (Flower's node ids are integers)."""
    digest = hashlib.sha256(device_id.encode()).digest()
    return (int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)) | 2


@dataclass
class Exchange:
    """What one ``send_and_receive`` call cost and yielded (one half of a round)."""

    message_type: str = ""
    sent: int = 0
    replies: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    bytes_out: int = 0
    bytes_in: int = 0
    participants: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Device -> why it gave no update (its own reason, or offline/timeout)."""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """Device -> the metrics of its good reply (an evaluate round's per-device figures)."""


@dataclass
class _Pending:
    device_id: str
    instruction: Message
    sent_at: float


class MqttGrid(Grid):
    def __init__(
        self,
        send: Sender,
        *,
        eligible: Callable[[], Iterable[str]],
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_message: int = flframes.DEFAULT_MAX_MESSAGE,
        validator: UpdateCheck | None = None,
        close: ClosePolicy | None = None,
        pull_interval: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._eligible = eligible
        self.max_payload = max_payload
        self._validator = validator
        self._close = close
        self._pull_interval = pull_interval
        self._clock = clock
        self._run = flower_compat.empty_run(0)
        self._lock = threading.Condition()
        self._nodes: dict[int, str] = {}
        self._pending: dict[str, _Pending] = {}
        self._replies: dict[str, Message] = {}
        self._reassembler = flframes.Reassembler(max_message=max_message)
        self._stop = threading.Event()
        self._encoder = wire.InstructionEncoder()
        self._recent_ids: tuple[float, list[int]] | None = None
        self.rejected: Counter[str] = Counter()
        """Replies refused before any strategy saw them, by reason."""
        self.late = 0
        self.current = Exchange()
        self.exchanges: list[Exchange] = []

    # ------------------------------------------------------- Grid interface --

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        if self._stop.is_set():
            raise RunStopped("the federated run was stopped")
        with self._lock:
            recent = self._recent_ids
            if recent is not None and self._clock() - recent[0] < REUSE_IDS_S:
                return list(recent[1])
        ids = []
        found = list(self._eligible())
        with self._lock:
            for device_id in found:
                node = node_id_for(device_id)
                self._nodes[node] = device_id
                ids.append(node)
            self._recent_ids = (self._clock(), ids)
        return list(ids)

    def get_nodes(self) -> Iterable[NodeInfo]:
        return (NodeInfo(node_id=n) for n in self.get_node_ids())

    def device_for(self, node_id: int) -> str | None:
        with self._lock:
            return self._nodes.get(node_id)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        with self._lock:
            self._recent_ids = None  # the next round asks afresh
        ids: list[str] = []
        for message in messages:
            message_id = flower_compat.assign_message_id(message)
            ids.append(message_id)
            device_id = self.device_for(message.metadata.dst_node_id)
            with self._lock:
                self.current.message_type = message.metadata.message_type
                self.current.sent += 1
            if device_id is None:
                self._fail(message, ERR_UNREACHABLE, "unknown node", "unknown_node")
                continue
            with self._lock:
                self._pending[message_id] = _Pending(device_id, message, self._clock())
            payload = self._encoder.encode(message)
            try:
                for frame in flframes.split(payload, self.max_payload):
                    self._send(device_id, frame)
            except EdgefleetError as exc:
                with self._lock:
                    self._pending.pop(message_id, None)
                self._fail(message, ERR_UNREACHABLE, str(exc), "unreachable")
                continue
            with self._lock:
                self.current.bytes_out += len(payload)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        with self._lock:
            return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        with self._lock:
            self.current = Exchange()
        started = self._clock()
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else started + timeout
        replies: list[Message] = []
        unanswered = "timeout"
        while waiting:
            with self._lock:
                ready = [i for i in waiting if i in self._replies]
                if not ready:
                    now = self._clock()
                    if self._close is not None and self._close(self.current, now - started):
                        unanswered = "straggler"
                        break
                    remaining = None if deadline is None else deadline - now
                    if remaining is not None and remaining <= 0:
                        break
                    if self._stop.is_set():
                        break
                    if remaining is None or self._close is not None:
                        remaining = min(remaining or self._pull_interval, self._pull_interval)
                    self._lock.wait(remaining)
                    continue
            got = list(self.pull_messages(ready))
            replies.extend(got)
            waiting.difference_update(ready)
        with self._lock:
            for message_id in waiting:
                pending = self._pending.pop(message_id, None)
                if pending is not None:
                    self.current.failures[unanswered] += 1
                    self.current.failed[pending.device_id] = (
                        "straggler: still training when the round closed"
                        if unanswered == "straggler"
                        else "timeout: no answer in time"
                    )
            self.exchanges.append(self.current)
        if self._stop.is_set():
            raise RunStopped("the federated run was stopped")
        return replies

    # ------------------------------------------------------------ network --

    def deliver(self, device_id: str, frame: bytes) -> None:
        """A frame from ``devices/{device_id}/fl/out`` (called by the ingest thread)."""
        with self._lock:
            data = self._reassembler.feed(device_id, frame, self._clock())
        if data is None:
            return
        try:
            envelope, arrays, body = flwire.decode(data)
        except ContractError as exc:
            self._count_rejected("undecodable", device_id, str(exc))
            return
        message_id = envelope.reply_to
        with self._lock:
            pending = self._pending.get(message_id)
            if pending is None:
                self.late += 1
                return
            if pending.device_id != device_id:
                # A device answering for another device's instruction: never accepted.
                self.rejected["wrong_sender"] += 1
                return
            del self._pending[message_id]
            self.current.bytes_in += len(data)
        try:
            reply = wire.decode_reply(envelope, arrays, body, pending.instruction)
        except ContractError as exc:
            self._count_rejected("undecodable", device_id, str(exc))
            reply = Message(
                Error(ERR_REJECTED, f"undecodable reply: {exc}"), reply_to=pending.instruction
            )
        reason = None
        if not reply.has_error() and self._validator is not None:
            reason = self._validate(pending.instruction, envelope, arrays, reply)
        if reason is not None:
            self._count_rejected(reason, device_id, "update refused")
            reply = Message(
                Error(ERR_REJECTED, f"update refused: {reason}"), reply_to=pending.instruction
            )
        with self._lock:
            if reply.has_error():
                if reason is None:
                    self.current.failures[wire.failure_code(reply)] += 1
                self.current.failed[device_id] = reply.error.reason or "error"
            else:
                self.current.replies += 1
                self.current.participants.append(device_id)
                self.current.metrics[device_id] = dict(envelope.metrics) or reply_metrics(reply)
            self._replies[message_id] = reply
            self._lock.notify_all()

    def _validate(
        self,
        instruction: Message,
        envelope: flwire.FlEnvelope,
        arrays: flwire.Arrays,
        reply: Message,
    ) -> str | None:
        """Native replies are checked on the arrays as they arrived (no Flower round trip)."""
        assert self._validator is not None
        if envelope.kind != "reply":
            return self._validator(instruction, reply)
        key = self._validator.arrayrecord_key
        if instruction.metadata.message_type != "train" or not instruction.has_content():
            return None
        sent = instruction.content.array_records.get(key)
        if sent is None:
            return None
        examples = envelope.metrics.get(self._validator.weighted_by_key)
        return self._validator.check(numpy_arrays(sent), arrays, examples)

    def device_offline(self, device_id: str) -> None:
        """Its Last Will arrived: every reply it owes becomes an error reply now."""
        with self._lock:
            owed = [(i, p) for i, p in self._pending.items() if p.device_id == device_id]
            for message_id, _ in owed:
                del self._pending[message_id]
            self._reassembler.forget(device_id)
        for _, pending in owed:
            self._fail(pending.instruction, ERR_OFFLINE, f"{device_id} went offline", "offline")

    def owed(self, device_id: str) -> int:
        """Replies ``device_id`` still owes (instructions sent, no answer yet)."""
        with self._lock:
            return sum(1 for p in self._pending.values() if p.device_id == device_id)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()

    @property
    def dropped_frames(self) -> dict[str, int]:
        return dict(self._reassembler.dropped)

    def _fail(self, instruction: Message, code: int, reason: str, counter: str) -> None:
        reply = Message(Error(code, reason), reply_to=instruction)
        device_id = self._nodes.get(instruction.metadata.dst_node_id, "")
        with self._lock:
            self.current.failures[counter] += 1
            if device_id:
                self.current.failed[device_id] = f"{counter}: {reason}"
            self._replies[instruction.metadata.message_id] = reply
            self._lock.notify_all()

    def _count_rejected(self, reason: str, device_id: str, detail: str) -> None:
        with self._lock:
            self.rejected[reason] += 1
            self.current.failures[f"rejected:{reason}"] += 1
        log.warning("federated reply from %s rejected (%s): %s", device_id, reason, detail)


def reply_metrics(reply: Message) -> dict[str, float]:
    """The numeric metrics a Flower reply carries (a ``flower`` envelope has none of its own:
    local-DP rounds answer with the ClientApp's ``MetricRecord``)."""
    return {
        k: float(v)
        for record in reply.content.metric_records.values()
        for k, v in record.items()
        if isinstance(v, int | float)
    }
