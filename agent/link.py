"""The device's MQTT session: outbox-first delivery, Last Will, commands in.

Every must-arrive message (telemetry batches, command acks) goes into the
SQLite :class:`~agent.spool.Spool` first and is deleted only when the broker
acknowledged it, so a broker outage, ``kill -9`` or a reboot loses nothing and
order is kept.  The network thread drains the spool oldest-first under a
:class:`~agent.spool.DrainPolicy` (rate + in-flight window), so after a long
outage the backlog flows out at a controlled pace while new batches queue
behind it.

Status and reported state are *latest-value* data: they are published
retained, directly, and re-published on every reconnect instead of spooled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as paho

from edgefleet_common.backoff import Backoff
from edgefleet_common.mqtt import Endpoint, MqttSession, Puback, Will
from edgefleet_contract import topics
from edgefleet_contract.codec import Codec, Rejected
from edgefleet_contract.messages import Command, CommandAck, Message, ReportedState, Status
from edgefleet_contract.topics import Channel

from .spool import DrainPolicy, Spool

log = logging.getLogger(__name__)

CommandCallback = Callable[[Command], None]
FrameHandler = Callable[[bytes], None]


class DeviceLink(MqttSession):
    def __init__(
        self,
        device_id: str,
        endpoint: Endpoint,
        spool: Spool,
        *,
        agent_version: str,
        policy: DrainPolicy | None = None,
        codec: Codec | None = None,
        on_command: CommandCallback | None = None,
        on_frame: FrameHandler | None = None,
    ) -> None:
        self.device_id = device_id
        self._codec = codec or Codec()
        self._agent_version = agent_version
        will = Will(
            topics.topic(device_id, Channel.STATUS),
            self._codec.encode(Status(device_id=device_id, online=False, reason="lost")),
        )
        super().__init__(device_id, endpoint, will=will, clean_start=False)
        self._spool = spool
        self._spool_lock = threading.Lock()
        self._policy = policy or DrainPolicy(rate_per_s=50.0, burst=100, max_inflight=20)
        self._inflight: dict[int, int] = {}
        self._sent_upto = 0
        self._unheard = Backoff(initial=0.5, maximum=10.0)
        self._hold_until = 0.0
        """No spooled message goes out before then (nobody was hearing them)."""
        self._state: ReportedState | None = None
        self._state_lock = threading.Lock()
        self._on_command = on_command
        self._on_frame = on_frame
        with self._spool_lock:
            backlog = spool.stats().depth
            if backlog:
                spool.note_replayed(backlog)

    # ------------------------------------------------------------ outbound --

    def send(self, channel: Channel, payload: bytes) -> int:
        """Queue a must-arrive message; it is delivered (in order) whenever the broker is up."""
        with self._spool_lock:
            return self._spool.push(topics.topic(self.device_id, channel), payload)

    def ack_command(self, ack: CommandAck) -> None:
        self.send(Channel.ACK, self._codec.encode(ack))

    def report(self, state: ReportedState) -> None:
        """Publish reported state soon if connected; it is re-published on every reconnect."""
        with self._state_lock:
            self._state = state
        self.call_soon(self._publish_state)

    def send_frame(self, payload: bytes) -> bool:
        """A federated-learning frame (binary); only meaningful while connected."""
        return self.publish_soon(topics.topic(self.device_id, Channel.FL_OUT), payload, qos=1)

    @property
    def spool(self) -> Spool:
        return self._spool

    def _publish_state(self) -> None:
        with self._state_lock:
            state = self._state
        if state is not None:
            self._publish_retained(Channel.STATE, state)

    def _publish_retained(self, channel: Channel, message: Message) -> None:
        """Publish ``message`` retained on this device's ``channel`` (its status, its state)."""
        self.publish(
            topics.topic(self.device_id, channel), self._codec.encode(message), qos=1, retain=True
        )

    # ------------------------------------------------------- session hooks --

    def _on_connected(self) -> None:
        self.subscribe(
            [
                (topics.topic(self.device_id, Channel.CMD), 1),
                (topics.topic(self.device_id, Channel.FL_IN), 1),
            ]
        )
        online = Status(
            device_id=self.device_id,
            online=True,
            reason="connected",
            ts=time.time(),
            agent_version=self._agent_version,
        )
        self._publish_retained(Channel.STATUS, online)
        self._publish_state()

    def _before_disconnect(self) -> None:
        offline = Status(device_id=self.device_id, online=False, reason="shutdown", ts=time.time())
        self._publish_retained(Channel.STATUS, offline)

    def _tick(self) -> None:
        if not self.connected.is_set() or time.monotonic() < self._hold_until:
            return
        allowed = self._policy.allowance(time.monotonic(), len(self._inflight))
        if allowed <= 0:
            return
        with self._spool_lock:
            entries = self._spool.peek(allowed, after_id=self._sent_upto)
        for entry in entries:
            mid = self.publish(entry.topic, entry.payload, qos=entry.qos, retain=entry.retain)
            if mid is None:
                break
            self._inflight[mid] = entry.id
            self._sent_upto = entry.id

    def _on_published(self, mid: int, outcome: Puback, reason: str) -> None:
        entry_id = self._inflight.pop(mid, None)
        if entry_id is None:
            return
        if outcome is Puback.UNHEARD:
            self._keep_unheard(entry_id)
            return
        self._unheard.reset()
        if outcome is Puback.REFUSED:
            # The broker refused it for good (v5 reason code, e.g. "Not authorized"):
            # retrying would block the queue forever.  Counted in link stats.
            log.error("broker refused spooled message %d: %s; dropping it", entry_id, reason)
        with self._spool_lock:
            self._spool.ack(entry_id)

    def _keep_unheard(self, entry_id: int) -> None:
        """The broker took ``entry_id`` but no subscription matched it: keep it, send it again.

        Only the fleet's ingest subscribes to a device's upstream topics, so nobody
        heard the message: ingest is not subscribed yet (the server or its broker is
        restarting, and a broker need not restore shared subscriptions from its
        persistence file).  Acking it would lose it, so the spool keeps it and the
        drain pauses (backing off) and resumes from it; anything sent after it is
        sent again too, which ingest's de-duplication absorbs.
        """
        self._sent_upto = min(self._sent_upto, entry_id - 1)
        delay = self._unheard.next_delay()
        self._hold_until = time.monotonic() + delay
        log.info(
            "nobody subscribed to spooled message %d yet (is the server up?); resending in %.1f s",
            entry_id,
            delay,
        )

    def _on_message(self, message: paho.MQTTMessage) -> None:
        parsed = topics.parse(message.topic)
        if parsed is None or parsed.device_id != self.device_id:
            return
        if parsed.channel is Channel.FL_IN:
            if self._on_frame is not None:
                self._on_frame(bytes(message.payload))
            return
        if parsed.channel is not Channel.CMD:
            return
        result = self._codec.decode_as(Command, bytes(message.payload), topic=message.topic)
        if isinstance(result, Rejected):
            log.warning("%s", result)
            self.ack_command(
                CommandAck(
                    device_id=self.device_id,
                    command_id=_command_id(bytes(message.payload)),
                    ts=time.time(),
                    status="rejected",
                    detail=str(result)[:2000],
                )
            )
            return
        if self._on_command is not None:
            self._on_command(result)


def _command_id(payload: bytes) -> str:
    """Best effort: the id of a command we could not parse, so the server can match the reply."""
    import json
    import re

    try:
        value = json.loads(payload).get("id")
    except (ValueError, AttributeError):
        return "unknown"
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.:@+-]{1,128}", value):
        return value
    return "unknown"
