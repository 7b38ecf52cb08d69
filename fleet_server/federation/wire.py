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

import functools
import io
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from edgefleet_common import flower_compat
from edgefleet_contract import flwire
from edgefleet_contract.errors import ContractError

from .validate import numpy_arrays

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


class InstructionEncoder:
    """Encodes a round's instructions, packing the content they share only once.

    A strategy sends every sampled device the same ``RecordDict`` (one object);
    its arrays and config are laid out for the first device and each further
    device costs only its own header (message id).  Without this, serialising
    the same weights again per device was a large part of a round's overhead
    at hundreds of devices."""

    def __init__(self) -> None:
        self._content: object = None
        self._template: flwire.FlEnvelope | None = None
        self._packed: flwire.Packed | None = None

    def encode(self, message: Message) -> bytes:
        """The bytes to publish for one instruction (its message id must be assigned)."""
        content = message.content if message.has_content() else None
        if content is None or content is not self._content:
            self._content = content
            self._template = native_instruction(message)
            self._packed = None
            if self._template is not None:
                self._packed = flwire.pack(numpy_arrays(message.content.array_records["arrays"]))
        message_id, run_id = message.metadata.message_id, message.metadata.run_id
        if self._template is None or self._packed is None:
            outer = flwire.FlEnvelope(kind="flower", message_id=message_id, run_id=run_id)
            return flwire.encode(outer, body=flower_compat.encode(message))
        header = self._template.model_copy(update={"message_id": message_id, "run_id": run_id})
        return flwire.encode(header, packed=self._packed)


def encode_instruction(message: Message) -> bytes:
    """One instruction's bytes, without sharing work with other instructions."""
    return InstructionEncoder().encode(message)


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
        content["arrays"] = ArrayRecord({k: to_array(v) for k, v in arrays.items()})
    return Message(content, reply_to=instruction)


@functools.lru_cache(maxsize=256)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def to_array(value: npt.NDArray[Any]) -> Array:
    """A Flower ``Array`` of ``value`` (the ``.npy`` bytes ``Array(ndarray)`` would make).

    Every reply of a round has the same shapes, so the ``.npy`` header is made once
    per shape instead of by ``np.save`` per array: at 1,000 replies a round this was
    most of the cost of turning replies into Flower messages."""
    array = np.ascontiguousarray(value)
    shape = tuple(int(n) for n in array.shape)
    descr = np.lib.format.dtype_to_descr(array.dtype)
    if not isinstance(descr, str):
        return Array(array)  # structured dtypes: not what a model's weights are
    data = _npy_header(descr, shape) + array.tobytes()
    return Array(dtype=str(array.dtype), shape=shape, stype="numpy.ndarray", data=data)


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
