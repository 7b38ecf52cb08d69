"""The MQTT topic layout.

Everything a device says or hears lives under ``devices/{id}/``, which is what
the broker ACL (``pattern readwrite devices/%u/#``) lets it touch.

=========================  =========  ========================================
topic                      direction  payload
=========================  =========  ========================================
devices/{id}/telemetry     up         :class:`~.messages.Telemetry` (QoS 1)
devices/{id}/state         up         :class:`~.messages.ReportedState` (retained)
devices/{id}/status        up         :class:`~.messages.Status` (retained, Last Will)
devices/{id}/ack           up         :class:`~.messages.CommandAck` (QoS 1)
devices/{id}/cmd           down       :class:`~.messages.Command` (QoS 1)
devices/{id}/fl/in         down       federated-learning frames (binary)
devices/{id}/fl/out        up         federated-learning frames (binary)
=========================  =========  ========================================
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from .ids import check_device_id, is_device_id

ROOT = "devices"


class Channel(StrEnum):
    TELEMETRY = "telemetry"
    STATE = "state"
    STATUS = "status"
    ACK = "ack"
    CMD = "cmd"
    FL_IN = "fl/in"
    FL_OUT = "fl/out"


UPSTREAM: frozenset[Channel] = frozenset(
    {Channel.TELEMETRY, Channel.STATE, Channel.STATUS, Channel.ACK, Channel.FL_OUT}
)
"""Channels a device publishes on (the server subscribes to these)."""


class ParsedTopic(NamedTuple):
    device_id: str
    channel: Channel


def topic(device_id: str, channel: Channel) -> str:
    """The topic for ``channel`` of ``device_id``; refuses ids that would escape the tree."""
    return f"{ROOT}/{check_device_id(device_id)}/{channel.value}"


def subscription(channel: Channel) -> str:
    """The server-side wildcard filter for one channel across the fleet."""
    return f"{ROOT}/+/{channel.value}"


def parse(name: str) -> ParsedTopic | None:
    """Split a concrete topic into device id and channel; ``None`` if it is not ours."""
    parts = name.split("/", 2)
    if len(parts) != 3 or parts[0] != ROOT or not is_device_id(parts[1]):
        return None
    try:
        return ParsedTopic(parts[1], Channel(parts[2]))
    except ValueError:
        return None
