"""Telemetry and state ingest: broker messages in, validated rows in the store.

The MQTT network thread only enqueues (:meth:`Ingest.offer`); one writer thread
decodes, groups and writes in batches, and only after the store committed does
it acknowledge the QoS 1 messages to the broker (manual acks).  So a crash
loses nothing: what was not committed was not acknowledged and the broker
redelivers it.  Redeliveries and spool replays are absorbed by the store's
``(device_id, batch_id)`` uniqueness.

Back-pressure: the queue is bounded.  When the writer falls behind, ``offer``
blocks the network thread, which stops reading the socket; unacknowledged
messages fill the broker's in-flight window and the broker queues the rest in
our persistent session.  The lag is exported as a metric.
"""

from __future__ import annotations

import functools
import gc
import logging
import queue
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from edgefleet_common.background import BackgroundThread, call_guarded
from edgefleet_contract import topics
from edgefleet_contract.codec import Accepted, Codec, Rejected
from edgefleet_contract.errors import NotFound
from edgefleet_contract.messages import (
    CommandAck,
    Message,
    ReportedState,
    Status,
    Telemetry,
)

from .metrics import Metrics
from .quota import DeviceQuota
from .ratelimit import LogThrottle
from .store.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message as the broker delivered it; ``mid``/``generation`` are for the ack."""

    topic: str
    payload: bytes
    received_at: float
    mid: int = 0
    qos: int = 0
    generation: int = 0


@dataclass
class Plan:
    """What one batch of inbound messages means for the store (pure data)."""

    telemetry: list[Telemetry] = field(default_factory=list)
    presence: dict[str, Status] = field(default_factory=dict)
    reported: dict[str, ReportedState] = field(default_factory=dict)
    acks: list[CommandAck] = field(default_factory=list)
    frames: list[tuple[str, bytes]] = field(default_factory=list)
    seen: dict[str, float] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)


def plan(items: Sequence[Inbound], codec: Codec) -> Plan:
    """Decode and group a batch.  Later messages of a device win for state and presence."""
    out = Plan()
    for item in items:
        result = codec.decode(item.topic, item.payload)
        if isinstance(result, Rejected):
            if result.reason.value == "binary_channel" and item.topic.endswith("/fl/out"):
                device_id = item.topic.split("/")[1]
                out.frames.append((device_id, item.payload))
                out.seen[device_id] = max(out.seen.get(device_id, 0.0), item.received_at)
            else:
                out.rejected.append(result)
            continue
        _place(out, result)
        out.seen[result.device_id] = max(out.seen.get(result.device_id, 0.0), item.received_at)
    return out


def _place(out: Plan, accepted: Accepted[Message]) -> None:
    msg = accepted.message
    if isinstance(msg, Telemetry):
        out.telemetry.append(msg)
    elif isinstance(msg, Status):
        out.presence[accepted.device_id] = msg
    elif isinstance(msg, ReportedState):
        out.reported[accepted.device_id] = msg
    elif isinstance(msg, CommandAck):
        out.acks.append(msg)
    # A Command arriving upstream is impossible by ACL design (cmd is not subscribed).


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while one batch is decoded and written.

    A batch's decoded models (tens of GC-tracked objects per message) live until it is
    written, so the collector ran every few messages over them and promoted them to
    older generations to scan again: about two thirds of the decoding's CPU.  They hold
    no cycles and go by reference counting when the batch is done.  Process-wide, so
    kept to one write attempt, never the back-off of a failing store; a collector
    someone else switched off stays off."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


Hook = Callable[[str], None]


class Ingest:
    """The bounded queue and the single writer thread."""

    def __init__(
        self,
        store: Store,
        *,
        codec: Codec | None = None,
        metrics: Metrics | None = None,
        queue_size: int = 50_000,
        batch_size: int = 500,
        acker: Callable[[Inbound], None] | None = None,
        on_device_update: Hook | None = None,
        on_frame: Callable[[str, bytes], None] | None = None,
        clock: Callable[[], float] = time.time,
        quota: DeviceQuota | None = None,
    ) -> None:
        self.store = store
        self.codec = codec or Codec()
        self.quota = quota
        self._queue: queue.Queue[Inbound] = queue.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._acker = acker
        self._on_device_update = on_device_update
        self._on_frame = on_frame
        self._clock = clock
        self._writer = BackgroundThread("ingest-writer", self._run)
        self._known: set[str] = set()
        self._throttle = LogThrottle(log, interval_s=10.0)
        self._last_lag = 0.0
        self.metrics = reg = metrics or Metrics()
        self.m_received = reg.counter("edgefleet_ingest_received_total", "Messages received")
        self.m_batches = reg.counter(
            "edgefleet_ingest_telemetry_batches_total", "Telemetry batches stored"
        )
        self.m_readings = reg.counter(
            "edgefleet_ingest_readings_total", "Readings in stored telemetry batches"
        )
        self.m_duplicates = reg.counter(
            "edgefleet_ingest_duplicates_total", "Telemetry batches already stored (redelivery)"
        )
        self.m_rejected = reg.counter(
            "edgefleet_ingest_rejected_total", "Messages refused, by reason", ("reason",)
        )
        self.m_write_errors = reg.counter(
            "edgefleet_ingest_write_errors_total", "Store writes that failed and were retried"
        )
        reg.gauge(
            "edgefleet_ingest_queue_depth",
            "Messages waiting for the writer",
            fn=lambda: [((), float(self._queue.qsize()))],
        )
        reg.gauge(
            "edgefleet_ingest_lag_seconds",
            "Age of the newest committed message when it was committed",
            fn=lambda: [((), self._last_lag)],
        )

    # ------------------------------------------------------------- input --

    def offer(self, item: Inbound) -> None:
        """Enqueue; blocks while the queue is full (back-pressure), unless stopping.

        Runs on the MQTT network thread, so it does as little as it can: the received
        counter is advanced by the writer, a batch at a time (a prometheus counter takes
        a lock, about a tenth of this thread's time when it was taken per message)."""
        while not self._writer.stopping.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                self._throttle.warning("queue_full", "ingest queue full: the writer is behind")

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------ writer --

    def start(self) -> None:
        self._writer.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        self._writer.stop(timeout)

    def _run(self) -> None:
        while not (self._writer.stopping.is_set() and self._queue.empty()):
            items = self._take()
            if items:
                self.process(items)

    def _take(self) -> list[Inbound]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        items = [first]
        while len(items) < self._batch_size:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def process(self, items: Sequence[Inbound]) -> None:
        """Write one batch durably, then acknowledge it.  Retries until the store takes it.

        Telemetry over its device's quota is dropped before decoding (counted as
        ``quota``) and still acknowledged: redelivering it would only repeat the refusal.
        """
        self.m_received.inc(len(items))
        with _collector_paused():
            batch = plan(self._within_quota(items), self.codec)
            self._drop_unknown_devices(batch)
            for rejected in batch.rejected:
                self.m_rejected.labels(rejected.reason.value).inc()
                self._throttle.warning(rejected.reason.value, "%s", rejected)
            stored = self._write_once(batch, retry_in=0.1)
        if not stored and not self._retry(batch, 0.1):
            return  # stopping with a broken store: the broker redelivers later
        now = self._clock()
        self._last_lag = max(0.0, now - max(i.received_at for i in items))
        if self._acker is not None:
            for item in items:
                if item.qos > 0:
                    self._acker(item)
        self._notify(batch)

    def _write_once(self, batch: Plan, *, retry_in: float) -> bool:
        try:
            self._write(batch)
            return True
        except Exception:
            self.m_write_errors.inc()
            log.exception("ingest write failed; retry in %.1fs (nothing acked)", retry_in)
            return False

    def _retry(self, batch: Plan, delay: float) -> bool:
        """Back off and write again until the store takes it; ``False`` when stopping
        with a store that still fails (nothing acked)."""
        while True:
            if self._writer.stopping.wait(delay) and self._queue.empty() and delay > 5:
                return False
            delay = min(delay * 2, 10.0)
            if self._write_once(batch, retry_in=delay):
                return True

    def _within_quota(self, items: Sequence[Inbound]) -> Sequence[Inbound]:
        if self.quota is None:
            return items
        kept = []
        for item in items:
            parsed = topics.parse(item.topic)
            if parsed is not None and parsed.channel is topics.Channel.TELEMETRY:
                why = self.quota.admit(parsed.device_id, len(item.payload))
                if why is not None:
                    self.m_rejected.labels("quota").inc()
                    self._throttle.warning(
                        f"quota:{parsed.device_id}",
                        "telemetry from %s refused (quota): %s",
                        parsed.device_id,
                        why,
                    )
                    continue
            kept.append(item)
        return kept

    def _write(self, batch: Plan) -> None:
        now = self._clock()
        if batch.telemetry:
            stored = self.store.insert_telemetry(batch.telemetry, received_at=now, seen=batch.seen)
            self.m_batches.inc(stored)
            self.m_duplicates.inc(len(batch.telemetry) - stored)
            self.m_readings.inc(sum(len(t.readings) for t in batch.telemetry))
        for device_id, status in batch.presence.items():
            self.store.set_presence(device_id, online=status.online, ts=status.ts or now)
        for device_id, state in batch.reported.items():
            self.store.set_reported(device_id, state, now)
        for ack in batch.acks:
            self.store.ack_command(
                ack.command_id,
                device_id=ack.device_id,
                status=ack.status,
                detail=ack.detail,
                ts=ack.ts,
            )
        if batch.seen and not batch.telemetry:
            self.store.touch_seen(batch.seen)

    def _drop_unknown_devices(self, batch: Plan) -> None:
        """A valid certificate for a device the store no longer has is refused, not stored."""
        unknown = {d for d in batch.seen if not self._is_known(d)}
        if not unknown:
            return
        for device_id in unknown:
            self.m_rejected.labels("unknown_device").inc()
            self._throttle.warning("unknown_device", "message from unknown device %s", device_id)
        batch.telemetry = [t for t in batch.telemetry if t.device_id not in unknown]
        batch.acks = [a for a in batch.acks if a.device_id not in unknown]
        batch.frames = [f for f in batch.frames if f[0] not in unknown]
        for mapping in (batch.presence, batch.reported, batch.seen):
            for device_id in unknown:
                mapping.pop(device_id, None)

    def _is_known(self, device_id: str) -> bool:
        if device_id in self._known:
            return True
        try:
            self.store.get_device(device_id)
        except NotFound:
            return False
        self._known.add(device_id)
        return True

    def forget(self, device_id: str) -> None:
        """Drop a device from the known-device cache (after deletion)."""
        self._known.discard(device_id)

    def _notify(self, batch: Plan) -> None:
        if self._on_frame is not None:
            for device_id, frame in batch.frames:
                call_guarded(
                    functools.partial(self._on_frame, device_id, frame),
                    log,
                    "federated frame handler failed for %s",
                    device_id,
                )
        if self._on_device_update is not None:
            for device_id in set(batch.presence) | set(batch.reported):
                call_guarded(
                    functools.partial(self._on_device_update, device_id),
                    log,
                    "device update hook failed for %s",
                    device_id,
                )
