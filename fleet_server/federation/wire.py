"""Flower messages <-> edgefleet's native federated payload (:mod:`edgefleet_contract.flwire`).

The strategies on the server are stock Flower and speak ``Message``; devices
speak the native envelope so that the agent install trains without Flower.
This module is the one place that translates: a plain ``train``/``evaluate``
instruction (one ``arrays`` record, one ``config`` record of scalars, no local
DP) becomes a native envelope; anything else (SecAgg+ stages, local DP, extra
records) is carried whole as Flower protobuf inside a ``flower`` envelope, which
only a device with the ``fl`` extra can answer.  Replies come back as Flower
messages addressed exactly as a SuperLink would address them.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from edgefleet_contract import flower_compat, flwire
from edgefleet_contract.errors import ContractError

ERR_DEVICE = 904
"""Flower error code of a device's native refusal; the reason text starts with its code."""

_FLOWER_ONLY = ("local-dp-epsilon",)
"""Config keys that ask for a Flower client mod on the device."""


def native_instruction(message: Message) -> flwire.FlEnvelope | None:
    """The native envelope for ``message``, or ``None`` when only Flower can carry it."""
    if not message.has_content() or message.metadata.message_type not in ("train", "evaluate"):
        return None
    content = message.content
    if set(content.keys()) != {"arrays", "config"}:
        return None
    config = content.config_records.get("config")
    if config is None or "arrays" not in content.array_records:
        return None
    if any(not isinstance(v, bool | int | float | str) for v in config.values()):
        return None
    if any(k in config for k in _FLOWER_ONLY):
        return None
    kind: flwire.Kind = "train" if message.metadata.message_type == "train" else "evaluate"
    return flwire.FlEnvelope(
        kind=kind,
        message_id=message.metadata.message_id,
        run_id=message.metadata.run_id,
        config=dict(config),  # type: ignore[arg-type]
    )


def encode_instruction(message: Message) -> bytes:
    """The bytes to publish for one instruction (its message id must be assigned)."""
    envelope = native_instruction(message)
    if envelope is None:
        outer = flwire.FlEnvelope(
            kind="flower", message_id=message.metadata.message_id, run_id=message.metadata.run_id
        )
        return flwire.encode(outer, body=flower_compat.encode(message))
    arrays = {k: v.numpy() for k, v in message.content.array_records["arrays"].items()}
    return flwire.encode(envelope, arrays)


def decode_reply(
    envelope: flwire.FlEnvelope, arrays: flwire.Arrays, body: bytes, instruction: Message
) -> Message:
    """The Flower reply to ``instruction`` that a device's envelope carries."""
    if envelope.kind == "error":
        error = envelope.error
        code = error.code if error is not None else flwire.FAILED
        detail = error.detail if error is not None else ""
        return Message(Error(ERR_DEVICE, f"{code}: {detail}"), reply_to=instruction)
    if envelope.kind == "flower":
        reply = flower_compat.decode(body)
        if reply.metadata.reply_to_message_id != instruction.metadata.message_id:
            raise ContractError("the Flower reply inside the envelope answers another instruction")
        return reply
    if envelope.kind != "reply":
        raise ContractError(f"a device sent a federated {envelope.kind!r} instead of a reply")
    metrics = MetricRecord(
        {
            k: int(v) if k == "num-examples" else float(v)  # Flower weights by an int count
            for k, v in envelope.metrics.items()
        }
    )
    content = RecordDict({"metrics": metrics})
    if arrays:
        content["arrays"] = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    return Message(content, reply_to=instruction)


def failure_code(reply: Message) -> str:
    """The failures-column key of an error reply: the device's reason code where it gave one."""
    if not reply.has_error():
        return ""
    error = reply.error
    if error.code == ERR_DEVICE and error.reason and ":" in error.reason:
        return error.reason.split(":", 1)[0]
    if error.code == 801:  # a device with Flower that skipped the round (agent.learning.worker)
        return flwire.NOT_ELIGIBLE
    return "client_error"
