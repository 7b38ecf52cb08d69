"""edgefleet's own federated payload: a versioned envelope plus raw numpy arrays.

A device must be able to train with nothing but the agent install (numpy,
pydantic), so the server's grid turns Flower's plain ``train``/``evaluate``
instructions into this payload and turns the answers back into Flower
messages; the strategies on the server stay stock Flower.  What only Flower can
run on a device (SecAgg+, ``LocalDpMod``) travels as ``kind="flower"`` with
Flower's own protobuf as the body, so a device without the ``fl`` extra can
still read the envelope and answer at once with a reason.

Layout (after :mod:`.flframes` reassembly)::

    b"EFW1" | header length (u32 BE) | header (JSON, FlEnvelope) | body

For ``train``/``evaluate``/``reply`` the body is the arrays' bytes, in the order
and with the dtype and shape the header lists.  Pure code, no I/O.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, StringConstraints, ValidationError

from .errors import ContractError
from .messages import WIRE, Message, Name, Scalar, Text, Token, Versioned, version_field

MAGIC = b"EFW1"
_LENGTH = struct.Struct(">I")
MAX_HEADER = 1 << 20
MAX_ARRAYS = 256
MAX_ELEMENTS = 1 << 26

Kind = Literal["train", "evaluate", "flower", "reply", "error"]
Dtype = Literal["float32", "float64"]
Arrays = dict[str, npt.NDArray[np.floating]]

# Why a device did not answer a round with an update (``FlError.code``).  The
# server counts a round's failures by these codes, so the run's failures column
# says why a device fell out rather than only that it did.
NOT_ELIGIBLE = "not_eligible"
NO_SAMPLES = "no_samples"
WRONG_MODEL = "wrong_model"
UNSUPPORTED_MODEL = "unsupported_model"
MISSING_EXTRA = "missing_extra"
BAD_INSTRUCTION = "bad_instruction"
FAILED = "failed"


class ArraySpec(Message):
    name: Name
    dtype: Dtype
    shape: Annotated[list[Annotated[int, Field(ge=0, le=MAX_ELEMENTS)]], Field(max_length=8)]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


class FlError(Message):
    code: Token
    detail: Text = ""


class FlEnvelope(Versioned):
    """One federated message: an instruction, a reply, or an error reply."""

    v: Literal[1] = version_field(1)
    kind: Kind
    message_id: Token
    reply_to: Annotated[str, StringConstraints(max_length=128)] = ""
    run_id: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    config: Annotated[dict[Name, Scalar], Field(max_length=128)] = {}
    metrics: Annotated[dict[Name, float], Field(max_length=128)] = {}
    arrays: Annotated[list[ArraySpec], Field(max_length=MAX_ARRAYS)] = []
    error: FlError | None = None
    body_size: Annotated[int, Field(ge=0, le=1 << 31)] = 0


@dataclass(frozen=True)
class Packed:
    """Arrays laid out for the wire once, for every instruction of a round that shares them."""

    specs: list[ArraySpec]
    body: bytes


def pack(arrays: Mapping[str, npt.NDArray[np.floating]]) -> Packed:
    specs: list[ArraySpec] = []
    chunks: list[bytes] = []
    for name, value in arrays.items():
        array = np.ascontiguousarray(value)
        if array.dtype.name not in ("float32", "float64"):
            array = array.astype(np.float32)
        specs.append(ArraySpec(name=name, dtype=array.dtype.name, shape=list(array.shape)))
        chunks.append(array.tobytes())
    return Packed(specs, b"".join(chunks))


def encode(
    envelope: FlEnvelope,
    arrays: Mapping[str, npt.NDArray[np.floating]] | None = None,
    body: bytes = b"",
    *,
    packed: Packed | None = None,
) -> bytes:
    """The payload for ``envelope`` with ``arrays`` (or ``packed``), or ``body`` (``flower``)."""
    if packed is None:
        packed = pack(arrays) if arrays else Packed([], body)
    header = envelope.model_copy(update={"arrays": packed.specs, "body_size": len(packed.body)})
    raw = header.model_dump_json().encode()
    return MAGIC + _LENGTH.pack(len(raw)) + raw + packed.body


def decode(data: bytes) -> tuple[FlEnvelope, Arrays, bytes]:
    """(envelope, arrays, body) of a payload; :class:`ContractError` for anything malformed."""
    if len(data) < len(MAGIC) + _LENGTH.size or data[: len(MAGIC)] != MAGIC:
        raise ContractError("federated payload does not start with the EFW1 header")
    (size,) = _LENGTH.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LENGTH.size
    if size > MAX_HEADER or start + size > len(data):
        raise ContractError(f"federated payload header of {size} bytes is oversized or cut off")
    try:
        envelope = FlEnvelope.model_validate_json(data[start : start + size], context=WIRE)
    except ValidationError as exc:
        raise ContractError(f"federated payload header is invalid: {exc}") from exc
    body = data[start + size :]
    if len(body) != envelope.body_size:
        raise ContractError(
            f"federated payload body is {len(body)} bytes, the header says {envelope.body_size}"
        )
    if envelope.kind == "flower":
        return envelope, {}, body
    arrays: Arrays = {}
    offset = 0
    for spec in envelope.arrays:
        if math.prod(spec.shape) > MAX_ELEMENTS or spec.name in arrays:
            raise ContractError(f"federated array {spec.name!r} is oversized or repeated")
        end = offset + spec.nbytes
        if end > len(body):
            raise ContractError(f"federated array {spec.name!r} runs past the payload's end")
        arrays[spec.name] = np.frombuffer(body, spec.dtype, math.prod(spec.shape), offset).reshape(
            spec.shape
        )
        offset = end
    if offset != len(body):
        raise ContractError("federated payload carries bytes no array accounts for")
    return envelope, arrays, b""


def error_reply(instruction: FlEnvelope, code: str, detail: str) -> FlEnvelope:
    """The answer of a device that will not (or cannot) do what ``instruction`` asks."""
    return FlEnvelope(
        kind="error",
        message_id=_reply_id(instruction),
        reply_to=instruction.message_id,
        run_id=instruction.run_id,
        error=FlError(code=code, detail=detail[:2000]),
    )


def reply(instruction: FlEnvelope, metrics: Mapping[str, float]) -> FlEnvelope:
    """A successful answer (its arrays, if any, go to :func:`encode`)."""
    return FlEnvelope(
        kind="reply",
        message_id=_reply_id(instruction),
        reply_to=instruction.message_id,
        run_id=instruction.run_id,
        metrics=dict(metrics),
    )


def flower_reply(instruction: FlEnvelope) -> FlEnvelope:
    """The envelope of a Flower protobuf answer to a ``flower`` instruction."""
    return FlEnvelope(
        kind="flower",
        message_id=_reply_id(instruction),
        reply_to=instruction.message_id,
        run_id=instruction.run_id,
    )


def _reply_id(instruction: FlEnvelope) -> str:
    return f"r{instruction.message_id}"[:128]
