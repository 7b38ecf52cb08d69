"""Every part of the store's queries in one class, which each backend completes.

The backends differ only in their connections (and PostgreSQL's telemetry
writes), so both take the same parts in the same order from here.
"""

from __future__ import annotations

from .accounts import AccountTables
from .artifacts import ArtifactTables
from .devices import DeviceTables
from .rollouts import RolloutTables
from .telemetry import TelemetryTables
from .training import TrainingTables


class StoreTables(
    TelemetryTables,
    AccountTables,
    TrainingTables,
    ArtifactTables,
    RolloutTables,
    DeviceTables,
):
    """The store's queries over :class:`~fleet_server.store._conn.Connections`."""
