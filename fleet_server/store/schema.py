"""Every table of the store, defined once (SQLAlchemy Core), for SQLite and PostgreSQL.

Alembic's revisions (``store/versions/``) create and change the schema from these
definitions; the queries in the store's modules name these tables and columns.
Column types are the portable ones: JSON documents are TEXT (parsed by the store,
queried with each dialect's JSON functions), flags are INTEGER 0/1, timestamps
are float Unix seconds.  PostgreSQL partitions raw telemetry and rollups by time
(``postgresql_partition_by``); SQLite ignores those options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
)
from sqlalchemy.types import TypeEngine

metadata = MetaData()


def _text(name: str, *args: Any, **kw: Any) -> Column[str]:
    return Column(name, Text, *args, **kw)


def _float(name: str, *args: Any, **kw: Any) -> Column[float]:
    return Column(name, Float, *args, **kw)


BIGINT = BigInteger().with_variant(Integer, "sqlite")
"""64-bit on both: SQLite's INTEGER already is (and only INTEGER makes a rowid key)."""


def _int(name: str, *args: Any, **kw: Any) -> Column[int]:
    return Column(name, BIGINT, *args, **kw)


devices = Table(
    "devices",
    metadata,
    _text("id", primary_key=True),
    _text("name", nullable=False),
    _text("tags", nullable=False, server_default="{}"),
    _text("groups", nullable=False, server_default="[]"),
    _text("state", nullable=False),
    _float("created_at", nullable=False),
    _float("enrolled_at"),
    _float("last_seen"),
    _int("online", nullable=False, server_default="0"),
    _text("cert_serial"),
    _float("cert_not_after"),
    _text("reported"),
    _float("reported_at"),
    _text("desired"),
    _int("desired_version", nullable=False, server_default="0"),
    _text("model_name"),
    _text("model_version"),
    _text("firmware_version"),
    _text("agent_version"),
    _text("hardware"),
    _text("health"),
    Index("idx_devices_state", "state"),
    Index("idx_devices_online", "online"),
)

enrollment_tokens = Table(
    "enrollment_tokens",
    metadata,
    _text("token_hash", primary_key=True),
    _text("device_id", ForeignKey("devices.id")),
    _float("expires_at"),
    _float("used_at"),
    Index("idx_enrollment_tokens_device_id", "device_id"),
)

certificates = Table(
    "certificates",
    metadata,
    _text("serial", primary_key=True),
    _text("device_id", ForeignKey("devices.id")),
    _float("not_after"),
    _float("issued_at"),
    _float("revoked_at"),
    Index("idx_certificates_device_id", "device_id"),
)

telemetry = Table(
    "telemetry",
    metadata,
    _text("device_id", nullable=False),
    _text("batch_id", nullable=False),
    _int("seq"),
    _float("ts", nullable=False),
    _float("received_at"),
    _text("body"),
    # PostgreSQL wants the partition key in every key of a partitioned table, so
    # once-only storage per batch id is telemetry_keys' job.
    PrimaryKeyConstraint("device_id", "batch_id", "ts", name="telemetry_pkey"),
    Index("idx_telemetry_device_id_ts", "device_id", "ts"),
    Index("idx_telemetry_received_at", "received_at"),
    postgresql_partition_by="RANGE (ts)",
)


telemetry_keys = Table(
    "telemetry_keys",
    metadata,
    _text("device_id", primary_key=True),
    _text("batch_id", primary_key=True),
    _float("received_at", nullable=False),
    Index("idx_telemetry_keys_received_at", "received_at"),
)
"""Each stored batch's id: a redelivered batch (same id, whatever its ts) is stored
once, across every partition of ``telemetry``; pruned with the raw rows."""


@dataclass(frozen=True)
class RollupColumn:
    """One accumulated per-minute rollup column and how two contributions merge."""

    name: str
    kind: type[TypeEngine[Any]]
    merge: Literal["sum", "max"]
    """How a device's second batch in the same minute adds in."""
    across: Literal["sum", "max"] = "sum"
    """How devices add up in a fleet-wide minute (drop counters are per-device totals:
    their maxima add up across devices)."""


ROLLUP_COLUMNS: tuple[RollupColumn, ...] = (
    RollupColumn("batches", Integer, "sum"),
    RollupColumn("inferences", Integer, "sum"),
    RollupColumn("errors", Integer, "sum"),
    RollupColumn("latency_p95_sum", Float, "sum"),
    RollupColumn("latency_n", Integer, "sum"),
    RollupColumn("latency_p99_max", Float, "max", "max"),
    RollupColumn("cpu_sum", Float, "sum"),
    RollupColumn("mem_sum", Float, "sum"),
    RollupColumn("rss_sum", Float, "sum"),
    RollupColumn("system_n", Integer, "sum"),
    RollupColumn("drift_max", Float, "max", "max"),
    RollupColumn("feedback_count", Integer, "sum"),
    RollupColumn("feedback_correct", Integer, "sum"),
    RollupColumn("readings", Integer, "sum"),
    RollupColumn("spool_dropped", Integer, "max"),
)
"""The rollup table's value columns, in order: the upsert, the fleet-wide
aggregate and the table itself are generated from this one list."""

rollups = Table(
    "rollups",
    metadata,
    _text("device_id", nullable=False),
    _float("minute", nullable=False),
    *(Column(c.name, BIGINT if c.kind is Integer else c.kind) for c in ROLLUP_COLUMNS),
    PrimaryKeyConstraint("device_id", "minute", name="rollups_pkey"),
    Index("idx_rollups_minute", "minute"),
    postgresql_partition_by="RANGE (minute)",
)

commands = Table(
    "commands",
    metadata,
    _text("id", primary_key=True),
    _text("device_id"),
    _text("name"),
    _text("args"),
    _float("created_at"),
    _text("actor"),
    _text("status"),
    _text("detail"),
    _float("acked_at"),
    Index("idx_commands_device_id_created_at", "device_id", "created_at"),
)

users = Table(
    "users",
    metadata,
    _text("username", primary_key=True),
    _text("role"),
    _text("password_hash"),
    _float("created_at"),
    _int("disabled", server_default="0"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    _text("id", primary_key=True),
    _text("username", ForeignKey("users.username")),
    _text("name"),
    _text("token_hash"),
    _float("created_at"),
    _float("expires_at"),
    _float("revoked_at"),
    _float("last_used"),
    Index("idx_api_tokens_token_hash", "token_hash", unique=True),
)

login_failures = Table(
    "login_failures",
    metadata,
    _text("source", nullable=False),
    _float("ts", nullable=False),
    Index("idx_login_failures_source_ts", "source", "ts"),
)
"""Failed logins by source address, so every API replica throttles the same guesser."""

audit = Table(
    "audit",
    metadata,
    _int("id", primary_key=True, autoincrement=True),
    _float("ts"),
    _text("actor"),
    _text("role"),
    _text("action"),
    _text("target"),
    _text("source_ip"),
    _text("outcome"),
    _text("detail"),
    Index("idx_audit_ts", "ts"),
)

fl_runs = Table(
    "fl_runs",
    metadata,
    _text("id", primary_key=True),
    _text("spec", nullable=False),
    _text("status", nullable=False),
    _text("created_by"),
    _float("created_at", nullable=False),
    _float("updated_at", nullable=False),
    _int("completed_rounds", nullable=False),
    _text("detail"),
    _text("result"),
    Index("idx_fl_runs_status", "status"),
)

fl_rounds = Table(
    "fl_rounds",
    metadata,
    _text("run_id", ForeignKey("fl_runs.id"), primary_key=True),
    _int("round", primary_key=True, autoincrement=False),
    _float("loss"),
    _float("accuracy"),
    _text("participants"),
    _text("failures"),
    _text("rejected"),
    _int("bytes_out"),
    _int("bytes_in"),
    _float("wall_s"),
    _float("ts"),
    _text("failed", nullable=False, server_default="{}"),
    _text("eligibility", nullable=False, server_default="{}"),
    _text("evaluation", nullable=False, server_default="{}"),
)

fl_checkpoints = Table(
    "fl_checkpoints",
    metadata,
    _text("run_id", ForeignKey("fl_runs.id"), primary_key=True),
    _int("round", primary_key=True, autoincrement=False),
    Column("weights", LargeBinary),
    Column("state", LargeBinary),
)

artifacts = Table(
    "artifacts",
    metadata,
    _int("id", primary_key=True, autoincrement=True),
    _text("kind", nullable=False),
    _text("name", nullable=False),
    _text("version", nullable=False),
    _text("flavor", nullable=False),
    _text("runtime"),
    _text("hardware"),
    _text("sha256", nullable=False),
    _int("size", nullable=False),
    _text("filename"),
    _text("target_path", nullable=False),
    _float("created_at"),
    _text("uploaded_by"),
    _text("lineage"),
    Index(
        "idx_artifacts_kind_name_version_flavor", "kind", "name", "version", "flavor", unique=True
    ),
    Index("idx_artifacts_sha256", "sha256"),
)

update_events = Table(
    "update_events",
    metadata,
    _int("id", primary_key=True, autoincrement=True),
    _text("device_id"),
    _float("ts"),
    _float("received_at"),
    _int("desired_version"),
    _text("kind"),
    _text("target"),
    _text("phase"),
    _float("progress"),
    _text("error"),
    Index("idx_update_events_device_id_id", "device_id", "id"),
)

rollouts = Table(
    "rollouts",
    metadata,
    _text("id", primary_key=True),
    _text("status", nullable=False),
    _text("artifact", nullable=False),
    _float("created_at", nullable=False),
    _text("created_by"),
    _float("updated_at"),
    _text("plan", nullable=False),
    _text("state", nullable=False),
    Index("idx_rollouts_status", "status"),
)

rollout_devices = Table(
    "rollout_devices",
    metadata,
    _text("rollout_id", ForeignKey("rollouts.id"), primary_key=True),
    _text("device_id", primary_key=True),
    _int("wave"),
    _text("status"),
    _text("body"),
)

rollout_events = Table(
    "rollout_events",
    metadata,
    _int("id", primary_key=True, autoincrement=True),
    _text("rollout_id", ForeignKey("rollouts.id")),
    _float("ts"),
    _text("kind"),
    _text("device_id"),
    _text("message"),
    Index("idx_rollout_events_rollout_id_id", "rollout_id", "id"),
)

drift_status = Table(
    "drift_status",
    metadata,
    _text("device_id", primary_key=True),
    _float("ts", nullable=False),
    _text("model"),
    _text("version"),
    _int("alert", nullable=False, server_default="0"),
    _float("alert_since"),
    _float("last_alert_ts"),
    _float("reference_effect"),
    _float("reference_p"),
    _float("baseline_effect"),
    _float("baseline_p"),
    _int("burn_in_rows"),
    _int("burn_in_needed"),
)

PARTITIONED = ("telemetry", "rollups")
"""Tables PostgreSQL partitions by day (``store/partitions.py``)."""
