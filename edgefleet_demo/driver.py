"""The apps on the devices: they ask each agent's local API for predictions and label some.

A labelled answer (``POST /v1/feedback`` with the true digit) makes the agent
keep that input as a training sample in its ``samples.db`` -- the data the
federated run later learns from without it leaving the device.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent import localclient
from edgefleet_contract.errors import EdgefleetError

from .data import DeviceData, shifted

BATCH = 32


@dataclass
class Counts:
    predictions: int = 0
    feedback: int = 0
    correct: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, predictions: int, feedback: int, correct: int) -> None:
        with self.lock:
            self.predictions += predictions
            self.feedback += feedback
            self.correct += correct


def _predict(address: str, rows: npt.NDArray[np.float32]) -> list[dict[str, object]]:
    status, doc = localclient.predict(address, rows)
    if status != 200:
        raise EdgefleetError(f"predict at {address}: {status} {doc}")
    predictions: list[dict[str, object]] = doc["predictions"]
    return predictions


def serve_and_label(
    address: str,
    data: DeviceData,
    *,
    label_share: float,
    counts: Counts,
    stop: threading.Event,
    seed: int,
) -> None:
    """Every field input once; the true label goes back for ``label_share`` of them."""
    rng = np.random.default_rng(seed)
    for start in range(0, len(data.y), BATCH):
        if stop.is_set():
            return
        rows, labels = data.x[start : start + BATCH], data.y[start : start + BATCH]
        answers = _predict(address, rows)
        labelled = correct = 0
        for answer, label in zip(answers, labels, strict=True):
            if rng.random() >= label_share:
                continue
            body = json.dumps({"prediction_id": answer["id"], "label": int(label)}).encode()
            status, doc = localclient.request(address, "POST", "/v1/feedback", body)
            if status != 200:
                raise EdgefleetError(f"feedback at {address}: {status} {doc}")
            labelled += 1
            correct += int(answer["class_id"] == int(label))
        counts.add(len(answers), labelled, correct)


def shifted_traffic(
    address: str, data: DeviceData, *, rows_per_s: int, stop: threading.Event, seed: int
) -> int:
    """Brighter, noisier inputs until ``stop``: enough per window for the agent to score drift."""
    rng = np.random.default_rng(seed)
    sent = 0
    while not stop.wait(0.25):
        pick = rng.integers(0, len(data.y), size=max(1, rows_per_s // 4))
        sent += len(_predict(address, shifted(data.x[pick], rng)))
    return sent
