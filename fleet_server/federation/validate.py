"""Refuse malformed or hostile training updates before any strategy aggregates them.

A device controls what it sends.  An update with NaN/inf, arrays of the wrong
name, shape, dtype or count, an absurd example count, or a norm far beyond what
the round could produce would poison the global model (one NaN makes every
weight NaN after FedAvg).  :class:`UpdateCheck` is the grid's validator: it
compares a reply with the instruction it answers and returns a reason (a short
counter name) or ``None`` when the update may be aggregated.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, Message

Arrays = Mapping[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class UpdateCheck:
    arrayrecord_key: str = "arrays"
    max_update_norm: float = 100.0
    """L2 norm of (reply - instruction) over all arrays above which an update is absurd."""
    max_examples: int = 10_000_000
    weighted_by_key: str = "num-examples"

    def __call__(self, instruction: Message, reply: Message) -> str | None:
        """Check a Flower reply (the path of rounds that travel as Flower messages)."""
        if instruction.metadata.message_type != "train" or not instruction.has_content():
            return None
        sent = instruction.content.array_records.get(self.arrayrecord_key)
        if sent is None:
            return None
        if not reply.has_content():
            return "no_content"
        records = reply.content.array_records
        if len(records) != 1 or self.arrayrecord_key not in records:
            return "wrong_records"
        got: dict[str, npt.NDArray[Any]] = {}
        for name, array in records[self.arrayrecord_key].items():
            try:
                got[name] = array.numpy()
            except (ValueError, TypeError):
                return "undecodable_array"
        metrics = list(reply.content.metric_records.values())
        if len(metrics) != 1:
            return "wrong_metrics"
        return self.check(numpy_arrays(sent), got, metrics[0].get(self.weighted_by_key))

    def check(self, sent: Arrays, got: Arrays, examples: object) -> str | None:
        """Check an update given as arrays (each converted once, whatever the wire)."""
        reason = _compare(sent, got)
        if reason is not None:
            return reason
        total = 0.0
        for name in sent:
            delta = got[name].astype(np.float64) - sent[name].astype(np.float64)
            total += float(np.square(delta).sum())
        if not np.isfinite(total) or total**0.5 > self.max_update_norm:
            return "absurd_norm"
        if not isinstance(examples, int | float) or not 0 < float(examples) <= self.max_examples:
            return "bad_example_count"
        return None


_converted: list[tuple[ArrayRecord, dict[str, npt.NDArray[Any]]]] = []
_converted_lock = threading.Lock()


def numpy_arrays(record: ArrayRecord) -> dict[str, npt.NDArray[Any]]:
    """``record`` as numpy arrays, converted once per record object.

    Every instruction of a round shares one ``ArrayRecord`` and Flower's
    ``Array.numpy()`` parses a serialised ``.npy`` each time, so at hundreds of
    devices per round converting it per device and per reply dominated the
    server's round overhead.  The newest few records are kept (strong references,
    so an ``is`` check cannot confuse a recycled object)."""
    with _converted_lock:
        for cached, arrays in _converted:
            if cached is record:
                return arrays
    arrays = {k: v.numpy() for k, v in record.items()}
    with _converted_lock:
        _converted.insert(0, (record, arrays))
        del _converted[4:]
    return arrays


def _compare(sent: Arrays, got: Arrays) -> str | None:
    if list(sent.keys()) != list(got.keys()):
        return "wrong_length" if len(sent) != len(got) else "wrong_names"
    for name, a in sent.items():
        b = got[name]
        if tuple(a.shape) != tuple(b.shape):
            return "wrong_shape"
        if a.dtype != b.dtype:
            return "wrong_dtype"
        if not np.isfinite(b).all():
            return "not_finite"
    return None
