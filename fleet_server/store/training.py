"""Federated training runs: the run record, per-round metrics and weight checkpoints.

A checkpoint is written in the same transaction as its round's metrics and the
run's ``completed_rounds``, so after a crash the run resumes from a round whose
weights and numbers agree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet_contract.errors import NotFound
from edgefleet_contract.messages import LearningStats, Telemetry

from ._conn import Connections, DbConn
from .rows import from_row, json_or, text_or_empty, to_row


@dataclass(frozen=True)
class TrainingRun:
    id: str
    spec: dict[str, Any]
    status: str
    """pending | running | completed | failed | stopped"""
    created_by: str
    created_at: float
    updated_at: float
    completed_rounds: int = 0
    detail: str = ""
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundRecord:
    run_id: str
    round: int
    loss: float | None
    accuracy: float | None
    participants: list[str]
    failures: dict[str, int]
    rejected: dict[str, int]
    bytes_out: int
    bytes_in: int
    wall_s: float
    ts: float
    failed: dict[str, str] = field(default_factory=dict)
    """Device -> why it gave no update this round."""
    eligibility: dict[str, int] = field(default_factory=dict)
    """``eligible`` and, per reason, how many targeted devices were left out."""
    evaluation: dict[str, Any] = field(default_factory=dict)
    """Federated evaluation on the devices' own held-out samples (when the round ran one)."""


class TrainingTables(Connections):
    def create_training_run(
        self, run_id: str, spec: dict[str, Any], *, actor: str, now: float
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO fl_runs (id, spec, status, created_by, created_at, updated_at, "
                "completed_rounds, detail, result) VALUES (?, ?, 'pending', ?, ?, ?, 0, '', '{}')",
                (run_id, json.dumps(spec), actor, now, now),
            )

    def get_training_run(self, run_id: str) -> TrainingRun:
        row = self._found(
            "SELECT * FROM fl_runs WHERE id = ?", (run_id,), f"no training run {run_id!r}"
        )
        return _run(row)

    def list_training_runs(
        self, *, status: str | None = None, limit: int = 100
    ) -> list[TrainingRun]:
        sql = "SELECT * FROM fl_runs"
        params: list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        sql += " ORDER BY created_at DESC LIMIT ?"
        params.append(limit)
        return [_run(r) for r in self._conn().execute(sql, params)]

    def set_training_status(
        self,
        run_id: str,
        status: str,
        *,
        now: float,
        detail: str = "",
        result: dict[str, Any] | None = None,
    ) -> None:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE fl_runs SET status = ?, detail = ?, updated_at = ?, "
                "result = COALESCE(?, result) WHERE id = ?",
                (status, detail, now, json.dumps(result) if result is not None else None, run_id),
            )
            if not cur.rowcount:
                raise NotFound(f"no training run {run_id!r}")

    def complete_round(self, record: RoundRecord, weights: bytes, state: bytes = b"") -> None:
        """Store a round with its checkpoint: the global weights and the strategy's state."""
        with self._tx() as conn:
            _insert_round(conn, record)
            conn.execute(
                "INSERT INTO fl_checkpoints (run_id, round, weights, state) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (run_id, round) DO UPDATE SET weights = excluded.weights, "
                "state = excluded.state",
                (record.run_id, record.round, weights, state),
            )
            conn.execute(
                "DELETE FROM fl_checkpoints WHERE run_id = ? AND round < ?",
                (record.run_id, record.round),
            )
            conn.execute(
                "UPDATE fl_runs SET completed_rounds = ?, updated_at = ? WHERE id = ?",
                (record.round, record.ts, record.run_id),
            )

    def record_failed_round(self, record: RoundRecord) -> None:
        """A round that ended the run (below quorum): its failures, and no checkpoint."""
        with self._tx() as conn:
            _insert_round(conn, record)

    def list_rounds(self, run_id: str) -> list[RoundRecord]:
        rows = self._conn().execute(
            "SELECT * FROM fl_rounds WHERE run_id = ? ORDER BY round", (run_id,)
        )
        return [_round(r) for r in rows]

    def latest_telemetry(self, device_id: str) -> Telemetry | None:
        row = self._one(
            "SELECT body FROM telemetry WHERE device_id = ? ORDER BY ts DESC LIMIT 1", (device_id,)
        )
        return None if row is None else Telemetry.model_validate_json(row[0])

    def learning_facts(
        self, device_ids: Sequence[str]
    ) -> dict[str, tuple[LearningStats | None, str | None]]:
        """Each device's latest learning stats and power source, in a few queries.

        Eligibility reads these two parts of the newest telemetry batch of every
        targeted device each round; fetching and validating whole batches one
        device at a time cost seconds per round at thousands of devices."""
        facts: dict[str, tuple[LearningStats | None, str | None]] = {}
        conn = self._conn()
        ids = list(device_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            d = self.dialect
            rows = conn.execute(
                f"SELECT t.device_id, {d.json_text('t.body', 'learning')}, "
                f"{d.json_text('t.body', 'system', 'power')} FROM telemetry t JOIN "
                f"(SELECT device_id, MAX(ts) AS ts FROM telemetry WHERE device_id IN ({marks}) "
                "GROUP BY device_id) m ON t.device_id = m.device_id AND t.ts = m.ts",
                chunk,
            )
            for device_id, learning, power in rows:
                stats = LearningStats.model_validate_json(learning) if learning else None
                facts[device_id] = (stats, power if isinstance(power, str) else None)
        return facts

    def latest_checkpoint(self, run_id: str) -> tuple[int, bytes] | None:
        row = self._one(
            "SELECT round, weights FROM fl_checkpoints WHERE run_id = ? "
            "ORDER BY round DESC LIMIT 1",
            (run_id,),
        )
        return None if row is None else (int(row["round"]), bytes(row["weights"]))

    def latest_strategy_state(self, run_id: str) -> bytes:
        """The strategy state saved with the newest checkpoint (empty: none saved)."""
        row = self._one(
            "SELECT state FROM fl_checkpoints WHERE run_id = ? ORDER BY round DESC LIMIT 1",
            (run_id,),
        )
        return b"" if row is None or row["state"] is None else bytes(row["state"])


_ROUND_VALUES = (
    "loss",
    "accuracy",
    "participants",
    "failures",
    "rejected",
    "bytes_out",
    "bytes_in",
    "wall_s",
    "ts",
    "failed",
    "eligibility",
    "evaluation",
)


_ROUND_JSON_WRITE = dict.fromkeys(
    ("participants", "failures", "rejected", "failed", "eligibility", "evaluation"), json.dumps
)
"""The round's JSON columns (the rest are numbers)."""
_ROUND_JSON_READ = {
    **dict.fromkeys(("participants", "failures", "rejected"), json.loads),
    # The columns a later schema version added: an empty value reads as {}.
    **dict.fromkeys(("failed", "eligibility", "evaluation"), json_or("{}")),
}


def _insert_round(conn: DbConn, record: RoundRecord) -> None:
    conn.execute(
        f"INSERT INTO fl_rounds (run_id, round, {', '.join(_ROUND_VALUES)}) "
        f"VALUES (?, ?{', ?' * len(_ROUND_VALUES)}) ON CONFLICT (run_id, round) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in _ROUND_VALUES),
        to_row(record, ("run_id", "round", *_ROUND_VALUES), **_ROUND_JSON_WRITE),
    )


def _run(r: Any) -> TrainingRun:
    return from_row(
        TrainingRun,
        r,
        spec=json.loads,
        detail=text_or_empty,
        result=json_or("{}"),
    )


def _round(r: Any) -> RoundRecord:
    return from_row(RoundRecord, r, **_ROUND_JSON_READ)
