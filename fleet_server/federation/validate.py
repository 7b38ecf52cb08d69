"""Refuse malformed or hostile training updates before any strategy aggregates them.

A device controls what it sends.  An update with NaN/inf, arrays of the wrong
name, shape, dtype or count, an absurd example count, or a norm far beyond what
the round could produce would poison the global model (one NaN makes every
weight NaN after FedAvg).  :class:`UpdateCheck` is the grid's validator: it
compares a reply with the instruction it answers and returns a reason (a short
counter name) or ``None`` when the update may be aggregated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message


@dataclass(frozen=True)
class UpdateCheck:
    arrayrecord_key: str = "arrays"
    max_update_norm: float = 100.0
    """L2 norm of (reply - instruction) over all arrays above which an update is absurd."""
    max_examples: int = 10_000_000
    weighted_by_key: str = "num-examples"

    def __call__(self, instruction: Message, reply: Message) -> str | None:
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
        got = records[self.arrayrecord_key]
        reason = _compare(sent, got)
        if reason is not None:
            return reason
        total = 0.0
        for name in sent:
            delta = got[name].numpy().astype(np.float64) - sent[name].numpy().astype(np.float64)
            total += float(np.square(delta).sum())
        if not np.isfinite(total) or total**0.5 > self.max_update_norm:
            return "absurd_norm"
        metrics = list(reply.content.metric_records.values())
        if len(metrics) != 1:
            return "wrong_metrics"
        count = metrics[0].get(self.weighted_by_key)
        if not isinstance(count, int | float) or not 0 < float(count) <= self.max_examples:
            return "bad_example_count"
        return None


def _compare(sent: ArrayRecord, got: ArrayRecord) -> str | None:
    if list(sent.keys()) != list(got.keys()):
        return "wrong_length" if len(sent) != len(got) else "wrong_names"
    for name in sent:
        a, b = sent[name], got[name]
        if tuple(a.shape) != tuple(b.shape):
            return "wrong_shape"
        if a.dtype != b.dtype:
            return "wrong_dtype"
        try:
            values = b.numpy()
        except (ValueError, TypeError):
            return "undecodable_array"
        if values.shape != tuple(a.shape):
            return "wrong_shape"
        if not np.isfinite(values).all():
            return "not_finite"
    return None
