"""Schema version 9: ``login_failures``, failed logins by source address.

The login throttle kept them in each process's memory; with several API replicas
a guesser could spread its attempts over them, so they live in the database.
"""

from __future__ import annotations

from alembic import op

from fleet_server.store import schema

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema.login_failures.create(op.get_bind())


def downgrade() -> None:
    schema.login_failures.drop(op.get_bind())
