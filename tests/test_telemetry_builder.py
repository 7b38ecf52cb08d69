"""One telemetry batch per interval, assembled from the real parts of the agent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.spool import Spool
from agent.system import SystemProbe
from agent.telemetry import TelemetryBuilder
from edgefleet_contract.codec import Codec
from edgefleet_contract.drift import build_reference
from edgefleet_contract.errors import ConfigError
from edgefleet_contract.messages import LearningStats, LinkStats, Reading, Telemetry

from .harness import digits_recorder


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_sequence_batch_ids_and_windows() -> None:
    mono = Clock(50.0)
    builder = TelemetryBuilder("dev-1", boot_id="b00t", clock=Clock(1.7e9), monotonic=mono)
    mono.t += 10.0
    first = builder.build()
    mono.t += 12.5
    second = builder.build()
    assert (first.seq, first.batch_id, first.window_s) == (1, "b00t-1", 10.0)
    assert (second.seq, second.batch_id, second.window_s) == (2, "b00t-2", 12.5)
    assert builder.seq == 2
    mono.t += 10 * 86400.0  # a suspended board: the window is capped, not refused
    assert builder.build().window_s == 86400.0


def test_batch_ids_differ_across_restarts() -> None:
    ids = {TelemetryBuilder("dev-1").build().batch_id for _ in range(50)}
    assert len(ids) == 50


def test_bad_identity_is_refused() -> None:
    with pytest.raises(ConfigError, match="device id"):
        TelemetryBuilder("dev/1")
    with pytest.raises(ConfigError, match="boot id"):
        TelemetryBuilder("dev-1", boot_id="a-b")


def test_full_batch_from_real_parts_round_trips_through_the_spool(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    recorder = digits_recorder(
        reference=build_reference(rng.normal(size=(1000, 8))), min_drift_samples=50
    )
    for row in rng.normal(size=(100, 8)).astype(np.float32):
        recorder.record(0.002, confidence=0.9, predicted=int(rng.integers(10)), row=row)
    spool = Spool(tmp_path / "spool.db", max_bytes=1 << 20, max_age_s=3600)
    builder = TelemetryBuilder("dev-1")
    batch = builder.build(
        window=recorder.snapshot(),
        system=SystemProbe(tmp_path).sample(),
        spool=spool.stats(),
        link=LinkStats(connects=1, published=4),
        learning=LearningStats(labelled_samples=12),
        readings=[Reading(ts=1.7e9, name="line.speed", value=3.5)],
    )
    assert batch.inference is not None and batch.inference.count == 100
    assert batch.drift is not None and batch.drift.samples == 100
    assert batch.system is not None and batch.system.mem_total_bytes > 0
    codec = Codec()
    spool.push("devices/dev-1/telemetry", codec.encode(batch))
    (entry,) = spool.peek(1)
    decoded = codec.decode_as(Telemetry, entry.payload, topic=entry.topic)
    assert decoded == batch
