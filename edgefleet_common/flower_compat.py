"""Every touch of Flower's non-public names, in one place (flwr pinned exactly).

edgefleet carries Flower ``Message`` objects over MQTT instead of Flower's gRPC
SuperLink.  That needs four things Flower does not export publicly:

* the protobuf (de)serialisation of a whole ``Message`` (``flwr.common.serde``),
* writing a message's id, which only the SuperLink normally does (the
  ``_message_id`` slot of ``Metadata``),
* the process-wide ``TaskIdentity`` the ``Message`` constructor reads its run id
  and source node from (unset, every strategy call raises), and
* an empty ``Run`` record for ``Grid.run``.

When flwr is upgraded, this module and ``tests/test_flower_compat.py`` are what
to re-check.  Everything else uses ``flwr.app`` / ``flwr.serverapp`` /
``flwr.clientapp`` only.  Imports of flwr are local so that importing this module
costs nothing until a federated message is actually handled.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from edgefleet_contract.errors import ContractError

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.supercore.run import Run

FLWR_VERSION = "1.41.0"
SERVER_NODE_ID = 1
"""Flower's own id for the server side (``SUPERLINK_NODE_ID``)."""


def check_version() -> None:
    """Refuse to run on a Flower whose internals were not checked against this module."""
    from importlib.metadata import version

    found = version("flwr")
    if found != FLWR_VERSION:
        raise ContractError(
            f"flwr {found} is installed but edgefleet's federated transport was checked against "
            f"flwr {FLWR_VERSION}; install `flwr=={FLWR_VERSION}` (the `fl` extra pins it)"
        )


def encode(message: Message) -> bytes:
    """A self-contained protobuf serialisation of ``message`` (metadata, content, error)."""
    from flwr.common.serde import message_to_proto

    return bytes(message_to_proto(message).SerializeToString())


def decode(data: bytes) -> Message:
    """The inverse of :func:`encode`; :class:`ContractError` for anything that is not one."""
    from flwr.common.serde import message_from_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage
    from google.protobuf.message import DecodeError

    proto = ProtoMessage()
    try:
        proto.ParseFromString(data)
        if not proto.HasField("metadata"):
            raise ContractError("federated frame carries no message metadata")
        return message_from_proto(proto)
    except (DecodeError, ValueError, TypeError, KeyError) as exc:
        raise ContractError(f"federated frame is not a Flower message: {exc}") from exc


def assign_message_id(message: Message) -> str:
    """Give an outgoing instruction its id, as Flower's SuperLink would."""
    message_id = uuid.uuid4().hex
    message.metadata.__dict__["_message_id"] = message_id
    return message_id


def set_task_identity(run_id: int, node_id: int = SERVER_NODE_ID) -> None:
    """Make ``Message(...)`` constructors in this process stamp ``run_id`` and ``node_id``."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id
    TaskIdentity.task_id = run_id


def empty_run(run_id: int) -> Run:
    from flwr.supercore.run import Run

    return Run.create_empty(run_id)
