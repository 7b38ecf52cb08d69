"""The store interface and its records.

One protocol per consumer (devices and twins, telemetry and the console's
views, rollouts, artifacts, accounts and audit, training); :class:`Store` is
their union, which both backends (``sqlite.py``, ``postgres.py``) implement.
A component depends on the narrowest protocol it uses.  Records are frozen
dataclasses; timestamps are float Unix seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from edgefleet_contract.messages import (
    ArtifactKind,
    Command,
    DesiredState,
    LearningStats,
    ReportedState,
    Telemetry,
)

if TYPE_CHECKING:
    from ..cohorts import DriftWindow
    from ._conn import Dialect
    from .overview import FleetSummary, UpdateEvent
    from .training import RoundRecord, TrainingRun

T = TypeVar("T")

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
DeviceState = Literal["pending", "enrolled", "revoked", "decommissioned"]
"""``decommissioned``: revoked and taken out of service; its history stays and its id may
be added again (its old certificates stay on the CRL)."""


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int


@dataclass(frozen=True)
class Device:
    id: str
    name: str
    tags: dict[str, str]
    groups: tuple[str, ...]
    state: DeviceState
    created_at: float
    enrolled_at: float | None = None
    last_seen: float | None = None
    online: bool = False
    cert_serial: int | None = None
    cert_not_after: float | None = None
    reported: ReportedState | None = None
    reported_at: float | None = None
    desired: DesiredState | None = None
    # Facts extracted from the reported state, kept as columns so selectors and
    # filters need not parse every device's JSON.
    model_name: str | None = None
    model_version: str | None = None
    firmware_version: str | None = None
    agent_version: str | None = None
    hardware: str | None = None
    health: str | None = None


@dataclass(frozen=True)
class CommandRecord:
    id: str
    device_id: str
    name: str
    args: dict[str, Any]
    created_at: float
    actor: str
    status: str = "sent"
    detail: str = ""
    acked_at: float | None = None

    @classmethod
    def sent(cls, device_id: str, command: Command, actor: str) -> CommandRecord:
        """The record of ``command`` as it goes out to ``device_id`` on ``actor``'s behalf."""
        return cls(command.id, device_id, command.name, command.args, command.ts, actor)


@dataclass(frozen=True)
class User:
    username: str
    role: Role
    password_hash: str
    created_at: float
    disabled: bool = False


@dataclass(frozen=True)
class ApiToken:
    id: str
    username: str
    name: str
    token_hash: str
    created_at: float
    expires_at: float
    revoked_at: float | None = None
    last_used: float | None = None


@dataclass(frozen=True)
class AuditEntry:
    ts: float
    actor: str
    role: str
    action: str
    target: str
    source_ip: str
    outcome: str
    detail: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


@dataclass(frozen=True)
class AuditFilter:
    """Which audit entries to list; every field left None matches all."""

    action: str | None = None
    target: str | None = None
    """Entries whose object contains this, e.g. ``rollout:ro-7`` or ``device:``."""
    outcome: str | None = None
    since: float | None = None
    until: float | None = None


@dataclass(frozen=True)
class RollupRow:
    device_id: str
    minute: float
    batches: int
    inferences: int
    errors: int
    latency_p95_ms: float | None
    latency_p99_max_ms: float | None
    cpu_percent: float | None
    mem_used_bytes: float | None
    rss_bytes: float | None
    drift_max: float | None
    feedback_count: int
    feedback_correct: int
    readings: int
    spool_dropped: int


@dataclass(frozen=True)
class Artifact:
    """A registered model package or firmware bundle (stored content-addressed by sha256)."""

    id: int
    kind: ArtifactKind
    name: str
    version: str
    flavor: str
    """Model flavour (``onnx-int8``, ...); empty for firmware."""
    runtime: str | None
    hardware: tuple[str, ...]
    sha256: str
    size: int
    filename: str
    target_path: str
    """The TUF target path: ``models/{name}/{version}/{filename}`` or ``firmware/...``."""
    created_at: float
    uploaded_by: str
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}" + (f":{self.flavor}" if self.flavor else "")


@dataclass(frozen=True)
class RolloutRow:
    """A rollout as stored: its plan and engine state as JSON (see fleet_server.rollouts)."""

    id: str
    status: str
    artifact: str
    created_at: float
    created_by: str
    updated_at: float
    plan: dict[str, Any]
    state: dict[str, Any]


@dataclass(frozen=True)
class RolloutEvent:
    ts: float
    kind: str
    message: str
    device_id: str | None = None


class DeviceFilter(Protocol):
    """A device predicate the store evaluates in SQL (a parsed ``selector.Selector``)."""

    @property
    def versioned(self) -> bool: ...
    def matches(self, device: Device) -> bool: ...
    def sql(self, dialect: Dialect) -> tuple[str, list[object]]: ...


class EnrollmentStore(Protocol):
    """What enrollment (``fleet_server.enrollment``) needs: device records, one-time
    tokens, certificates and revocation.

    ``take_enrollment_token`` must be atomic (one winner when two devices race
    with the same token) and raise ``EnrollmentError`` for an unknown, used or
    expired token or a revoked device.  ``create_device`` raises ``StoreError``
    when the id is taken.
    """

    def create_device(self, device_id: str, *, name: str, tags: dict[str, str], now: float) -> bool:
        """True when the id was a decommissioned device's, now taken over."""
        ...

    def save_enrollment_token(self, device_id: str, token_hash: str, expires_at: float) -> None: ...
    def take_enrollment_token(self, token_hash: str, now: float) -> str: ...
    def add_certificate(
        self, device_id: str, serial: int, not_after: float, now: float
    ) -> None: ...
    def revoke_device(self, device_id: str, now: float) -> list[int]: ...
    def supersede_certificates(self, device_id: str, keep: int, now: float) -> list[int]: ...
    def revoked_serials(self) -> list[tuple[int, float]]: ...
    def is_revoked(self, device_id: str) -> bool: ...


class DeviceStore(EnrollmentStore, Protocol):
    """Devices, their twins, enrollment, certificates and commands."""

    def get_device(self, device_id: str) -> Device: ...
    def decommission_device(self, device_id: str) -> None: ...
    def list_devices(
        self,
        *,
        where: DeviceFilter | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Page[Device]:
        """Devices by id; ``where`` (a parsed selector) filters them in SQL."""
        ...

    def all_devices(self, *, where: DeviceFilter | None = None) -> list[Device]:
        """Every device ``where`` matches, by id, without their parsed twins (for
        sweeps over the fleet: ``reported``/``desired`` are ``None`` here)."""
        ...

    def update_device(
        self,
        device_id: str,
        *,
        name: str | None = None,
        tags: dict[str, str] | None = None,
        groups: Sequence[str] | None = None,
    ) -> Device: ...
    def set_presence(self, device_id: str, *, online: bool, ts: float) -> None: ...
    def count_online(self) -> int: ...
    def reset_presence(self) -> None:
        """Mark every device offline; retained status messages then restore the truth."""
        ...

    def touch_seen(self, seen: Mapping[str, float]) -> None: ...
    def set_reported(self, device_id: str, reported: ReportedState, ts: float) -> None: ...
    def set_desired(self, device_id: str, desired: DesiredState) -> None: ...
    def next_desired_version(self, device_id: str) -> int: ...
    # commands
    def add_command(self, command: CommandRecord) -> None: ...
    def ack_command(
        self, command_id: str, *, device_id: str, status: str, detail: str, ts: float
    ) -> None: ...
    def list_commands(self, device_id: str, *, limit: int = 50) -> list[CommandRecord]: ...


class TelemetryStore(Protocol):
    """Raw batches, per-minute rollups, drift, retention and the console's fleet views."""

    def insert_telemetry(
        self,
        batches: Sequence[Telemetry],
        *,
        received_at: float,
        seen: Mapping[str, float] | None = None,
    ) -> int:
        """Store the batches not stored yet; how many were new.  ``seen`` is written
        as by ``touch_seen``, in the same transaction."""
        ...

    def query_raw(
        self, device_id: str, *, since: float, until: float, limit: int = 1000
    ) -> list[Telemetry]: ...
    def query_rollups(
        self, device_ids: Sequence[str] | None, *, since: float, until: float
    ) -> list[RollupRow]: ...
    def aggregate_rollups(
        self, device_ids: Sequence[str], *, since: float, until: float
    ) -> list[RollupRow]:
        """One row per minute over ``device_ids`` (``device_id`` holds the device count)."""
        ...

    def drift_windows(
        self, *, since: float, until: float, tag: str | None, limit: int
    ) -> list[tuple[str | None, DriftWindow]]:
        """The newest ``limit`` chi-squared drift windows in the range, each with the
        device's value of tag ``tag`` (None when untagged or ``tag`` is None)."""
        ...

    def prune(self, now: float, *, raw_retention_s: float, rollup_retention_s: float) -> int: ...
    def fleet_summary(
        self, *, now: float, window_s: float, drift_threshold: float, silent_s: float
    ) -> FleetSummary: ...
    def list_update_events(self, device_id: str, *, limit: int = 100) -> list[UpdateEvent]: ...
    def recent_raw(self, device_id: str, *, since: float, limit: int) -> list[Telemetry]: ...
    def latest_telemetry(self, device_id: str) -> Telemetry | None: ...


class RolloutStore(Protocol):
    def save_rollout(
        self,
        row: RolloutRow,
        *,
        devices: Sequence[dict[str, Any]] = (),
        events: Sequence[RolloutEvent] = (),
        create: bool = False,
        expect_updated_at: float | None = None,
    ) -> None:
        """Write the rollout, changed device rows and new events in one transaction.

        With ``expect_updated_at`` only over the stored row of that ``updated_at``;
        another process's save in between is a ``StoreError`` and nothing is written."""
        ...

    def get_rollout(self, rollout_id: str) -> RolloutRow: ...
    def rollout_devices(self, rollout_id: str) -> list[dict[str, Any]]: ...
    def list_rollouts(
        self, *, statuses: Sequence[str] | None = None, limit: int = 100
    ) -> list[RolloutRow]: ...
    def rollout_events(self, rollout_id: str, *, limit: int = 200) -> list[RolloutEvent]: ...


class ArtifactStore(Protocol):
    """The artifact registry's rows (model packages and firmware bundles)."""

    def add_artifact(self, artifact: Artifact) -> Artifact: ...
    def get_artifact(self, artifact_id: int) -> Artifact: ...
    def find_artifacts(
        self,
        *,
        kind: str | None = None,
        name: str | None = None,
        version: str | None = None,
        flavor: str | None = None,
        sha256: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[Artifact]: ...


class AccountStore(Protocol):
    """Users, API tokens and console sessions, and the append-only audit log."""

    def create_user(self, username: str, *, role: Role, password_hash: str, now: float) -> None: ...
    def get_user(self, username: str) -> User: ...
    def list_users(self) -> list[User]: ...
    def update_user(
        self,
        username: str,
        *,
        role: Role | None = None,
        password_hash: str | None = None,
        disabled: bool | None = None,
    ) -> User: ...
    def create_api_token(self, token: ApiToken) -> None: ...
    def find_api_token(self, token_hash: str) -> ApiToken | None: ...
    def list_api_tokens(self, username: str | None = None) -> list[ApiToken]: ...
    def revoke_api_token(self, token_id: str, now: float) -> None: ...
    def revoke_user_tokens(self, username: str, now: float) -> int: ...
    def touch_api_token(self, token_id: str, now: float) -> None: ...
    def record_login_failure(self, source: str, ts: float, *, forget_before: float) -> None: ...
    def login_failures(self, source: str, *, since: float) -> list[float]: ...
    def clear_login_failures(self, source: str) -> None: ...
    def append_audit(self, entry: AuditEntry) -> None: ...
    def list_audit(
        self,
        *,
        offset: int = 0,
        limit: int = 100,
        actor: str | None = None,
        filters: AuditFilter | None = None,
    ) -> Page[AuditEntry]: ...


class TrainingRecords(Protocol):
    """Federated training runs, their rounds and checkpoints."""

    def create_training_run(
        self, run_id: str, spec: dict[str, Any], *, actor: str, now: float
    ) -> None: ...
    def get_training_run(self, run_id: str) -> TrainingRun: ...
    def list_training_runs(
        self, *, status: str | None = None, limit: int = 100
    ) -> list[TrainingRun]: ...
    def set_training_status(
        self,
        run_id: str,
        status: str,
        *,
        now: float,
        detail: str = "",
        result: dict[str, Any] | None = None,
    ) -> None: ...
    def complete_round(self, record: RoundRecord, weights: bytes, state: bytes = b"") -> None: ...
    def record_failed_round(self, record: RoundRecord) -> None: ...
    def list_rounds(self, run_id: str) -> list[RoundRecord]: ...
    def latest_checkpoint(self, run_id: str) -> tuple[int, bytes] | None: ...
    def latest_strategy_state(self, run_id: str) -> bytes: ...
    def learning_facts(
        self, device_ids: Sequence[str]
    ) -> dict[str, tuple[LearningStats | None, str | None]]: ...


class Store(
    DeviceStore,
    TelemetryStore,
    RolloutStore,
    ArtifactStore,
    AccountStore,
    TrainingRecords,
    Protocol,
):
    """Everything the server keeps, on SQLite or PostgreSQL."""

    @property
    def dialect(self) -> Dialect: ...
    def schema_version(self) -> int: ...
    def close(self) -> None: ...
