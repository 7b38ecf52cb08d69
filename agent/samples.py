"""Labelled samples kept on the device for federated training.

Ground truth arrives through the local API's ``/v1/feedback``; the input row it
refers to is taken from the prediction cache and stored here with its label.
The data never leaves the device: federated rounds train on it in place.
Bounded: beyond ``max_samples`` the oldest are deleted (and counted).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgefleet_common.private import private_file
from edgefleet_contract.messages import LearningStats

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    features BLOB NOT NULL,
    width INTEGER NOT NULL,
    label INTEGER NOT NULL,
    model_version TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class CachedPrediction:
    features: npt.NDArray[np.float32]
    predicted: int
    model_version: str


class PredictionCache:
    """Recent predictions by id, so feedback can name one; the oldest are overwritten.

    Rows live in one preallocated float32 ring (``capacity x width``) rather than one
    small array per prediction: at the default 10,000 entries that is ~2.5 MB for a
    64-feature model instead of ~8 MB of per-object overhead, and it never grows.
    A model with another input width starts a fresh ring.  A model that trains on
    nothing stores no row (width 0): its entries are plain Python values, since a call
    writing numpy rows right after a model call (its caches gone cold) cost ~60 µs.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._slots: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._rows = np.zeros((0, 0), dtype=np.float32)
        self._width = -1
        self._predicted: list[int] = []
        self._versions: list[str] = []
        self._next = 0

    def put(
        self,
        prediction_id: str,
        features: npt.NDArray[np.floating] | None,
        predicted: int,
        model_version: str,
    ) -> None:
        """Remember a prediction; ``features`` None: nothing to train on, no row kept."""
        if self._capacity <= 0:
            return
        row = None if features is None else np.ravel(features)
        width = 0 if row is None else row.size
        with self._lock:
            if width != self._width:
                self._start(width)
            slot = self._next
            self._next = (slot + 1) % self._capacity
            old = self._ids[slot]
            if old is not None:
                del self._slots[old]
            if row is not None:
                self._rows[slot] = row
            self._predicted[slot] = predicted
            self._versions[slot] = model_version
            self._ids[slot] = prediction_id
            self._slots[prediction_id] = slot

    def _start(self, width: int) -> None:
        """A fresh ring for rows of ``width`` values (0: no rows)."""
        capacity = self._capacity
        self._rows = np.zeros((capacity if width else 0, width), dtype=np.float32)
        self._width = width
        self._predicted = [0] * capacity
        self._ids = [None] * capacity
        self._versions = [""] * capacity
        self._slots.clear()
        self._next = 0

    def pop(self, prediction_id: str) -> CachedPrediction | None:
        """The prediction filed under ``prediction_id``, forgotten (an empty row if none
        was kept)."""
        with self._lock:
            slot = self._slots.pop(prediction_id, None)
            if slot is None:
                return None
            self._ids[slot] = None
            row = self._rows[slot].copy() if self._width else np.zeros(0, dtype=np.float32)
            return CachedPrediction(row, self._predicted[slot], self._versions[slot])

    def __len__(self) -> int:
        return len(self._slots)


class SampleStore:
    def __init__(
        self, path: Path, *, max_samples: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._max = max_samples
        self._clock = clock
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        private_file(path)  # labelled samples are the device owner's data
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def add(self, features: npt.NDArray[np.floating], label: int, model_version: str = "") -> None:
        row = np.ascontiguousarray(features, dtype=np.float32).ravel()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO samples (ts, features, width, label, model_version) "
                "VALUES (?, ?, ?, ?, ?)",
                (self._clock(), row.tobytes(), row.size, int(label), model_version),
            )
            excess = self._count() - self._max
            if excess > 0:
                self._db.execute(
                    "DELETE FROM samples WHERE id IN (SELECT id FROM samples ORDER BY id LIMIT ?)",
                    (excess,),
                )
                self._bump("evicted", excess)
            self._db.execute("COMMIT")

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def _bump(self, key: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (key, n),
        )

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def dataset(self, width: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """All samples of the given width (a model's input size), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT features, label FROM samples WHERE width = ? ORDER BY id", (width,)
            ).fetchall()
        if not rows:
            return np.zeros((0, width), np.float32), np.zeros(0, np.int64)
        x = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32).reshape(-1, width)
        y = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
        return x, y

    def mark_trained(self) -> None:
        """Remember the newest sample a training round has seen (for 'new samples')."""
        with self._lock:
            newest = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM samples").fetchone()[0]
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('trained_upto', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (int(newest),),
            )

    def stats(self, *, busy: bool = False) -> LearningStats:
        with self._lock:
            total = self._count()
            upto = self._meta("trained_upto")
            new = int(
                self._db.execute("SELECT COUNT(*) FROM samples WHERE id > ?", (upto,)).fetchone()[0]
            )
        return LearningStats(labelled_samples=total, new_samples=new, busy=busy)

    def close(self) -> None:
        with self._lock:
            self._db.close()
