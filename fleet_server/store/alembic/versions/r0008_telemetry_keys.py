"""Schema version 8: ``telemetry_keys``, the once-only record of each stored batch id.

PostgreSQL cannot keep ``(device_id, batch_id)`` unique across the day
partitions of ``telemetry`` (a key of a partitioned table must hold the
partition key), so the batch ids live in their own small table on both
backends.  Existing rows are carried over.
"""

from __future__ import annotations

from alembic import op

from fleet_server.store import schema

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema.telemetry_keys.create(op.get_bind())
    op.execute(
        "INSERT INTO telemetry_keys (device_id, batch_id, received_at) "
        "SELECT device_id, batch_id, MIN(COALESCE(received_at, ts)) FROM telemetry "
        "GROUP BY device_id, batch_id"
    )
