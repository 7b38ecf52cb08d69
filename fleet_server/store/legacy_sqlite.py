"""Ordered schema migrations, applied on open and recorded in ``schema_version``.

Each migration is a function over a :class:`sqlite_utils.Database`; append new
ones, never edit old ones.  The database is upgraded inside one transaction per
step, so a crash mid-upgrade leaves the previous version intact.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils


def _v1(db: sqlite_utils.Database) -> None:
    """The first schema, in the order it was always created: devices and their
    identities, then what they send and are sent, then accounts and the audit log."""
    _v1_devices(db)
    _v1_traffic(db)
    _v1_accounts(db)


def _v1_devices(db: sqlite_utils.Database) -> None:
    db.table("devices").create(
        {
            "id": str,
            "name": str,
            "tags": str,
            "groups": str,
            "state": str,
            "created_at": float,
            "enrolled_at": float,
            "last_seen": float,
            "online": int,
            "cert_serial": str,
            "cert_not_after": float,
            "reported": str,
            "reported_at": float,
            "desired": str,
            "desired_version": int,
            "model_name": str,
            "model_version": str,
            "firmware_version": str,
            "agent_version": str,
            "hardware": str,
            "health": str,
        },
        pk="id",
        not_null={"name", "tags", "groups", "state", "created_at", "online", "desired_version"},
        defaults={"online": 0, "desired_version": 0, "tags": "{}", "groups": "[]"},
    )
    db.table("devices").create_index(["state"])
    db.table("devices").create_index(["online"])
    db.table("enrollment_tokens").create(
        {"token_hash": str, "device_id": str, "expires_at": float, "used_at": float},
        pk="token_hash",
        foreign_keys=[("device_id", "devices", "id")],
    )
    db.table("enrollment_tokens").create_index(["device_id"])
    db.table("certificates").create(
        {
            "serial": str,
            "device_id": str,
            "not_after": float,
            "issued_at": float,
            "revoked_at": float,
        },
        pk="serial",
        foreign_keys=[("device_id", "devices", "id")],
    )
    db.table("certificates").create_index(["device_id"])


def _v1_traffic(db: sqlite_utils.Database) -> None:
    db.table("telemetry").create(
        {
            "device_id": str,
            "batch_id": str,
            "seq": int,
            "ts": float,
            "received_at": float,
            "body": str,
        },
        pk=("device_id", "batch_id"),
    )
    db.table("telemetry").create_index(["device_id", "ts"])
    db.table("telemetry").create_index(["received_at"])
    db.table("rollups").create(
        {
            "device_id": str,
            "minute": float,
            "batches": int,
            "inferences": int,
            "errors": int,
            "latency_p95_sum": float,
            "latency_n": int,
            "latency_p99_max": float,
            "cpu_sum": float,
            "mem_sum": float,
            "rss_sum": float,
            "system_n": int,
            "drift_max": float,
            "feedback_count": int,
            "feedback_correct": int,
            "readings": int,
            "spool_dropped": int,
        },
        pk=("device_id", "minute"),
    )
    db.table("rollups").create_index(["minute"])
    db.table("commands").create(
        {
            "id": str,
            "device_id": str,
            "name": str,
            "args": str,
            "created_at": float,
            "actor": str,
            "status": str,
            "detail": str,
            "acked_at": float,
        },
        pk="id",
    )
    db.table("commands").create_index(["device_id", "created_at"])


def _v1_accounts(db: sqlite_utils.Database) -> None:
    db.table("users").create(
        {"username": str, "role": str, "password_hash": str, "created_at": float, "disabled": int},
        pk="username",
        defaults={"disabled": 0},
    )
    db.table("api_tokens").create(
        {
            "id": str,
            "username": str,
            "name": str,
            "token_hash": str,
            "created_at": float,
            "expires_at": float,
            "revoked_at": float,
            "last_used": float,
        },
        pk="id",
        foreign_keys=[("username", "users", "username")],
    )
    db.table("api_tokens").create_index(["token_hash"], unique=True)
    db.table("audit").create(
        {
            "id": int,
            "ts": float,
            "actor": str,
            "role": str,
            "action": str,
            "target": str,
            "source_ip": str,
            "outcome": str,
            "detail": str,
        },
        pk="id",
    )
    db.table("audit").create_index(["ts"])
    db.execute(
        "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
    )
    db.execute(
        "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
    )


def _federated_training(db: sqlite_utils.Database) -> None:
    db.table("fl_runs").create(
        {
            "id": str,
            "spec": str,
            "status": str,
            "created_by": str,
            "created_at": float,
            "updated_at": float,
            "completed_rounds": int,
            "detail": str,
            "result": str,
        },
        pk="id",
        not_null={"spec", "status", "created_at", "updated_at", "completed_rounds"},
    )
    db.table("fl_runs").create_index(["status"])
    db.table("fl_rounds").create(
        {
            "run_id": str,
            "round": int,
            "loss": float,
            "accuracy": float,
            "participants": str,
            "failures": str,
            "rejected": str,
            "bytes_out": int,
            "bytes_in": int,
            "wall_s": float,
            "ts": float,
        },
        pk=("run_id", "round"),
        foreign_keys=[("run_id", "fl_runs", "id")],
    )
    db.table("fl_checkpoints").create(
        {"run_id": str, "round": int, "weights": bytes},
        pk=("run_id", "round"),
        foreign_keys=[("run_id", "fl_runs", "id")],
    )


def _artifacts(db: sqlite_utils.Database) -> None:
    """The artifact registry: model packages and firmware bundles, one row per file."""
    db.table("artifacts").create(
        {
            "id": int,
            "kind": str,
            "name": str,
            "version": str,
            "flavor": str,
            "runtime": str,
            "hardware": str,
            "sha256": str,
            "size": int,
            "filename": str,
            "target_path": str,
            "created_at": float,
            "uploaded_by": str,
            "lineage": str,
        },
        pk="id",
        not_null={"kind", "name", "version", "flavor", "sha256", "size", "target_path"},
    )
    db.table("artifacts").create_index(["kind", "name", "version", "flavor"], unique=True)
    db.table("artifacts").create_index(["sha256"])


def _update_events(db: sqlite_utils.Database) -> None:
    """History of each device's reported update phases (store/overview.py)."""
    db.table("update_events").create(
        {
            "id": int,
            "device_id": str,
            "ts": float,
            "received_at": float,
            "desired_version": int,
            "kind": str,
            "target": str,
            "phase": str,
            "progress": float,
            "error": str,
        },
        pk="id",
    )
    db.table("update_events").create_index(["device_id", "id"])


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _federated_training]
MIGRATIONS.append(_artifacts)
MIGRATIONS.append(_update_events)


def _rollouts(db: sqlite_utils.Database) -> None:
    """Rollouts (fleet_server.rollouts): plan + engine state, per-device progress, events."""
    db.table("rollouts").create(
        {
            "id": str,
            "status": str,
            "artifact": str,
            "created_at": float,
            "created_by": str,
            "updated_at": float,
            "plan": str,
            "state": str,
        },
        pk="id",
        not_null={"status", "artifact", "created_at", "plan", "state"},
    )
    db.table("rollouts").create_index(["status"])
    db.table("rollout_devices").create(
        {"rollout_id": str, "device_id": str, "wave": int, "status": str, "body": str},
        pk=("rollout_id", "device_id"),
        foreign_keys=[("rollout_id", "rollouts", "id")],
    )
    db.table("rollout_events").create(
        {
            "id": int,
            "rollout_id": str,
            "ts": float,
            "kind": str,
            "device_id": str,
            "message": str,
        },
        pk="id",
        foreign_keys=[("rollout_id", "rollouts", "id")],
    )
    db.table("rollout_events").create_index(["rollout_id", "id"])


MIGRATIONS.append(_rollouts)


def _drift_status(db: sqlite_utils.Database) -> None:
    """Each device's newest chi-squared drift report (fleet_server.store.telemetry)."""
    db.table("drift_status").create(
        {
            "device_id": str,
            "ts": float,
            "model": str,
            "version": str,
            "alert": int,
            "alert_since": float,
            "last_alert_ts": float,
            "reference_effect": float,
            "reference_p": float,
            "baseline_effect": float,
            "baseline_p": float,
            "burn_in_rows": int,
            "burn_in_needed": int,
        },
        pk="device_id",
        not_null={"ts", "alert"},
        defaults={"alert": 0},
    )


MIGRATIONS.append(_drift_status)


def _fl_round_details(db: sqlite_utils.Database) -> None:
    """Why each device fell out of a round, who was eligible, and the strategy's own state."""
    db.table("fl_rounds").add_column("failed", str, not_null_default="{}")
    db.table("fl_rounds").add_column("eligibility", str, not_null_default="{}")
    db.table("fl_rounds").add_column("evaluation", str, not_null_default="{}")
    db.table("fl_checkpoints").add_column("state", bytes)


MIGRATIONS.append(_fl_round_details)


def migrate(db: sqlite_utils.Database) -> int:
    """Bring ``db`` to the newest schema; returns the version it is at."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    current = int(row[0] or 0)
    for version, step in enumerate(MIGRATIONS, start=1):
        if version <= current:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            step(db)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        current = version
    return current
