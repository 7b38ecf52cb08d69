"""The server's MQTT session: one persistent subscriber for the whole fleet.

It subscribes to every upstream channel with QoS 1 on a persistent session
(``clean_start=False``), so messages published while the server is down are
queued by the broker and delivered when it returns.  It acknowledges them only
after the ingest writer has committed them (manual acks).  With several ingest
processes the filters are MQTT 5 shared subscriptions (``$share/ingest/...``):
the broker gives each message to one member, and redelivers what a member that
died had not acknowledged to another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as paho

from edgefleet_common.mqtt import Endpoint, MqttSession
from edgefleet_contract import topics
from edgefleet_contract.codec import Codec
from edgefleet_contract.errors import LinkError
from edgefleet_contract.messages import Command
from edgefleet_contract.topics import Channel

from .config import SERVER_IDENTITY
from .ingest import Inbound, Ingest

log = logging.getLogger(__name__)


class ServerLink(MqttSession):
    def __init__(
        self,
        endpoint: Endpoint,
        ingest: Ingest,
        *,
        client_id: str = SERVER_IDENTITY,
        codec: Codec | None = None,
        subscriptions: Sequence[str] | None = None,
    ) -> None:
        # A short loop timeout: acks are handed to the network thread and should not
        # wait long for it to wake, or the broker's in-flight window throttles ingest.
        super().__init__(
            client_id, endpoint, clean_start=False, manual_ack=True, tick_interval=0.005
        )
        self._ingest = ingest
        self._codec = codec or ingest.codec
        self.subscriptions = (
            list(subscriptions)
            if subscriptions is not None
            else [topics.subscription(ch) for ch in sorted(topics.UPSTREAM)]
        )
        """Topic filters (QoS 1); ``$share/<group>/...`` ones when ingest is shared
        between processes (:func:`fleet_server.roles.subscriptions`)."""
        self.subscribed = threading.Event()
        """Set once the broker granted the subscriptions of the current connection."""
        self._client.on_subscribe = self._handle_suback

    def _on_connected(self) -> None:
        self.subscribed.clear()
        if self.subscriptions:
            self.subscribe([(f, 1) for f in self.subscriptions])
        else:
            self.subscribed.set()

    def _handle_suback(
        self, client: paho.Client, userdata: object, mid: int, codes: list[Any], props: object
    ) -> None:
        refused = [str(c) for c in codes if getattr(c, "is_failure", False)]
        if refused:
            log.error("the broker refused the server's subscriptions: %s", ", ".join(refused))
            return
        self.subscribed.set()

    def _on_message(self, message: paho.MQTTMessage) -> None:
        self._ingest.offer(
            Inbound(
                topic=message.topic,
                payload=bytes(message.payload),
                received_at=time.time(),
                mid=message.mid,
                qos=message.qos,
                generation=self.generation,
            )
        )

    def acknowledge(self, item: Inbound) -> None:
        """Ingest calls this after the store committed ``item``."""
        self.ack(item.mid, item.qos, item.generation)

    # ------------------------------------------------------------ downstream --

    def send_command(self, device_id: str, command: Command) -> None:
        """Publish a command (QoS 1).  Raises ``LinkError`` when the broker is unreachable."""
        self.send_raw(device_id, Channel.CMD, self._codec.encode(command))

    def send_raw(self, device_id: str, channel: Channel, payload: bytes) -> None:
        if not self.publish_soon(topics.topic(device_id, channel), payload, qos=1):
            raise LinkError(
                f"the server is not connected to the broker ({self.last_error or 'starting'});"
                " the message to the device was not sent"
            )
