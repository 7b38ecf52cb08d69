"""Versioned payload models for every JSON message on the wire.

Each message carries ``v`` (its schema version).  A reader accepts exactly the
versions it knows; anything else is a counted rejection (see :mod:`.codec`),
never an exception that escapes a loop.  Every string and list is bounded so a
hostile payload cannot make a reader allocate without limit, and floats must be
finite.  Unknown fields are refused: within a version the contract is closed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from .ids import DeviceId

SCHEMA_VERSION: Literal[1] = 1

Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Text = Annotated[str, StringConstraints(max_length=2000)]
Token = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@+-]{1,128}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Timestamp = Annotated[float, Field(ge=0, le=1e11)]
"""Seconds since the Unix epoch."""
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]
Scalar = bool | int | float | Annotated[str, StringConstraints(max_length=1024)]


class Message(BaseModel):
    """Base of all wire models: closed, finite, immutable."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


WIRE = {"wire": True}
"""Validation context the codec passes: on the wire the version must be explicit."""


def version_field(current: int = SCHEMA_VERSION) -> Any:
    """The ``v`` field of a :class:`Versioned` model: ``current`` when built in code,
    required on the wire.  Absent reads as ``None`` (so the one field's validator can tell),
    never as a silent default."""
    return Field(default=None, validate_default=True, json_schema_extra={"const": current})


class Versioned(Message):
    """A top-level payload; ``v`` defaults in code but must be present on the wire.

    The check is a *field* validator: a model-level "before" validator would make pydantic
    turn the whole JSON document into Python objects before validating it, which doubled
    the cost of decoding a telemetry batch (the ingest's largest share of CPU)."""

    @field_validator("v", mode="before", check_fields=False)
    @classmethod
    def _version_present(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            return value
        if info.context == WIRE:
            raise PydanticCustomError("missing_version", "no schema version field 'v'")
        return get_args(cls.model_fields["v"].annotation)[0]


# ---------------------------------------------------------------- status ----


class Status(Versioned):
    """Retained on ``status``; the offline form is also the connection's Last Will."""

    v: Literal[1] = version_field()
    device_id: DeviceId
    online: bool
    reason: Literal["connected", "shutdown", "lost"]
    ts: Timestamp | None = None
    agent_version: Annotated[str, StringConstraints(max_length=64)] | None = None


# ------------------------------------------------------------- telemetry ----


class SystemStats(Message):
    cpu_percent: Annotated[float, Field(ge=0, le=100)]
    load1: Annotated[float, Field(ge=0)] | None = None
    mem_used_bytes: Count
    mem_total_bytes: Count
    rss_bytes: Count
    disk_used_bytes: Count
    disk_total_bytes: Count
    temperature_c: Annotated[float, Field(ge=-100, le=250)] | None = None
    uptime_s: Annotated[float, Field(ge=0)]
    power: Literal["ac", "battery", "unknown"] = "unknown"
    battery_percent: Annotated[float, Field(ge=0, le=100)] | None = None


class LatencySummary(Message):
    p50_ms: Annotated[float, Field(ge=0)]
    p95_ms: Annotated[float, Field(ge=0)]
    p99_ms: Annotated[float, Field(ge=0)]
    max_ms: Annotated[float, Field(ge=0)]
    mean_ms: Annotated[float, Field(ge=0)]


class InferenceStats(Message):
    """Model behaviour over the telemetry window."""

    model: Name
    version: Name
    count: Count
    errors: Count
    throughput_per_s: Annotated[float, Field(ge=0)]
    latency: LatencySummary | None = None
    confidence_hist: Annotated[list[Count], Field(max_length=100)] = []
    """Counts of top-1 confidence in equal-width bins over [0, 1]."""
    class_counts: Annotated[dict[Name, Count], Field(max_length=1000)] = {}
    feedback_count: Count = 0
    feedback_correct: Count = 0
    """Ground-truth labels received in the window and how many matched the prediction."""

    @property
    def mean_confidence(self) -> float | None:
        """Mean top-1 confidence over the window (bin centres; None: no histogram)."""
        return InferenceStats.pooled_confidence([self])

    @staticmethod
    def pooled_confidence(stats: Sequence[InferenceStats]) -> float | None:
        """Mean top-1 confidence over several windows, each weighted by its answers (their
        histograms may bin differently)."""
        total = weight = 0.0
        for s in stats:
            bins = len(s.confidence_hist)
            for i, n in enumerate(s.confidence_hist):
                total += n * (i + 0.5) / bins
                weight += n
        return total / weight if weight else None


class ShadowStats(Message):
    """A candidate model run beside the active one on the window's live inputs.

    Only the active model's answers reach the local app; the candidate's are
    compared with them.  ``dropped`` counts inputs the bounded shadow queue had
    no room for (the candidate never slows the answer down, it skips instead).
    ``labelled`` counts ground-truth labels for inputs both models answered, and
    how many each got right.
    """

    model: Name
    version: Name
    samples: Count = 0
    agreed: Count = 0
    dropped: Count = 0
    errors: Count = 0
    latency: LatencySummary | None = None
    labelled: Count = 0
    active_correct: Count = 0
    candidate_correct: Count = 0
    discordant: Count | None = None
    """Labelled inputs exactly one of the two got right (for a paired test); agents from
    before it do not send it, and servers from before it refuse it: upgrade servers first."""


class FeatureDrift(Message):
    feature: Annotated[int, Field(ge=0, le=1_000_000)]
    psi: Annotated[float, Field(ge=0)]


class DriftStats(Message):
    """Population Stability Index of the window's inputs against the package reference."""

    method: Literal["psi"] = "psi"
    samples: Count
    score: Annotated[float, Field(ge=0)]
    """The largest per-feature PSI (0.1 = moderate, 0.25 = major shift by convention)."""
    features: Annotated[list[FeatureDrift], Field(max_length=4096)] = []
    """The most drifted features, largest first."""


class FeatureTest(Message):
    feature: Annotated[int, Field(ge=0, le=1_000_000)]
    p_value: Annotated[float, Field(ge=0, le=1)]
    """Benjamini-Hochberg adjusted across the window's features."""
    effect: Annotated[float, Field(ge=0, le=1)]
    """Jensen-Shannon distance of the feature's histogram (0 = same, 1 = disjoint)."""


class DriftTest(Message):
    """One comparison of a window: against the package reference or the device baseline."""

    p_value: Annotated[float, Field(ge=0, le=1)]
    """The window's p-value: the smallest adjusted per-feature p (Simes)."""
    effect: Annotated[float, Field(ge=0, le=1)]
    """The largest per-feature Jensen-Shannon distance."""
    drifted: Count = 0
    """Features whose adjusted p-value is at most the report's ``alpha``."""
    features: Annotated[list[FeatureTest], Field(max_length=4096)] = []
    """The most significant features, smallest p first."""


class BurnIn(Message):
    rows: Count
    needed: Count


class StatisticTest(Message):
    name: Literal["spe", "t2"]
    """``spe``: PCA reconstruction error; ``t2``: Hotelling's T^2 inside the PCA subspace."""
    p_value: Annotated[float, Field(ge=0, le=1)]
    """Benjamini-Hochberg adjusted across the statistics."""
    effect: Annotated[float, Field(ge=0, le=1)]
    """Jensen-Shannon distance of the statistic's histogram."""


class MultivariateTest(Message):
    """One comparison of the window's per-row PCA statistics."""

    p_value: Annotated[float, Field(ge=0, le=1)]
    """The smallest adjusted p over the statistics (Simes)."""
    effect: Annotated[float, Field(ge=0, le=1)]
    """The largest Jensen-Shannon distance over the statistics."""
    error_ratio: Annotated[float, Field(ge=0, le=1e12)] | None = None
    """Mean reconstruction error of the window over that of the other side (1 = same)."""
    statistics: Annotated[list[StatisticTest], Field(max_length=8)] = []


class MultivariateReport(Message):
    """How well the package's PCA still explains the window's rows (``method: pca``).

    Agents send it when the package ships a PCA reference (``drift-pca.json``);
    servers from before this field refuse a report that carries it, so upgrade
    the server first.  ``histograms`` are counts of ``spe`` and ``t2`` over the
    reference's bins: mergeable like the per-feature ones.
    """

    method: Literal["pca"]
    components: Annotated[int, Field(ge=1, le=4096)]
    reference: MultivariateTest
    baseline: MultivariateTest | None = None
    histograms: Annotated[
        list[Annotated[list[Count], Field(max_length=258)]], Field(max_length=8)
    ] = []


class DriftReport(Message):
    """Drift of the window's inputs, tested on fixed-bin histograms (``method: chi2``).

    Sent by agents since the chi-squared statistics; agents before it send
    :class:`DriftStats` (PSI), which servers keep reading.  ``histograms`` are the
    window's counts per feature over the package reference's bins: matrices of
    one model version add up, so the server merges them per cohort.
    """

    method: Literal["chi2"]
    samples: Count
    alpha: Annotated[float, Field(gt=0, lt=1)]
    reference: DriftTest
    """Against the package's reference: how the device differs from the training data."""
    baseline: DriftTest | None = None
    """Against this device's burn-in baseline; None while the burn-in is still filling."""
    burn_in: BurnIn
    alert: bool = False
    """The device's inputs changed from its own normal (hysteresis and minimum duration),
    judged on the per-feature and the multivariate test together."""
    alert_windows: Count = 0
    """Consecutive windows the alert condition has held (or, when alerting, cleared for)."""
    histograms: Annotated[
        list[Annotated[list[Count], Field(max_length=258)]], Field(max_length=4096)
    ] = []
    multivariate: MultivariateReport | None = None
    """The PCA check of how features move together; None when the package has no PCA."""

    @property
    def score(self) -> float:
        """The effect that matters for this device: against its baseline once it has one."""
        return (self.baseline or self.reference).effect


class LinkStats(Message):
    connects: Count = 0
    disconnects: Count = 0
    published: Count = 0
    publish_failures: Count = 0


class SpoolStats(Message):
    depth: Count = 0
    bytes: Count = 0
    dropped_total: Count = 0
    """Batches dropped because the spool was full or too old; never reset."""
    replayed_total: Count = 0
    oldest_age_s: Annotated[float, Field(ge=0)] = 0.0


class LearningStats(Message):
    """What federated-training eligibility needs to know."""

    labelled_samples: Count = 0
    new_samples: Count = 0
    busy: bool = False


class Reading(Message):
    """A free-form timestamped gauge (application sensors, custom metrics)."""

    ts: Timestamp
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
    value: float


class Telemetry(Versioned):
    """One batch: everything a device reports for one window."""

    v: Literal[1] = version_field()
    device_id: DeviceId
    batch_id: Token
    """Unique per device; the server stores each batch once however often it arrives."""
    seq: Count
    ts: Timestamp
    window_s: Annotated[float, Field(ge=0, le=86400)]
    system: SystemStats | None = None
    inference: InferenceStats | None = None
    drift: DriftReport | DriftStats | None = None
    """PSI from older agents (:class:`DriftStats`), chi-squared tests from current ones."""
    learning: LearningStats | None = None
    shadow: ShadowStats | None = None
    """A shadow run's comparison (absent from agents without one, and from older agents)."""
    link: LinkStats = LinkStats()
    spool: SpoolStats = SpoolStats()
    readings: Annotated[list[Reading], Field(max_length=10_000)] = []


# ----------------------------------------------------------------- state ----


class ModelRef(Message):
    name: Name
    version: Name
    sha256: Sha256
    runtime: Literal["onnx", "tflite"]


class FirmwareRef(Message):
    version: Name
    slot: Annotated[str, StringConstraints(max_length=16)] | None = None
    hardware: Name | None = None


ArtifactKind = Literal["model", "firmware"]
"""What a device installs: a model package or a firmware bundle."""

UpdatePhase = Literal[
    "pending",
    "downloading",
    "verifying",
    "staging",
    "self_test",
    "switching",
    "probation",
    "committed",
    "rolled_back",
    "failed",
]
UPDATE_PHASES: tuple[UpdatePhase, ...] = get_args(UpdatePhase)
"""Every phase: a successful update's path in order, then the two ends of a failed one."""
UPDATE_PATH: tuple[UpdatePhase, ...] = UPDATE_PHASES[: UPDATE_PHASES.index("committed") + 1]
"""A successful update's phases, ``pending`` to ``committed``; an update only moves forward."""
INSTALLING: frozenset[UpdatePhase] = frozenset(UPDATE_PATH[: UPDATE_PATH.index("probation")])
"""The phases before the new artifact serves on probation: it is still being installed."""


class UpdateReport(Message):
    """Progress of the update the device is working on (or last finished)."""

    desired_version: Count
    kind: ArtifactKind
    target: Name
    phase: UpdatePhase
    progress: Annotated[float, Field(ge=0, le=1)] = 0.0
    error: Text | None = None
    ts: Timestamp
    bytes_transferred: Count = 0
    """Bytes the device received for this update (a delta patch, or the full artifact)."""
    delta_used: bool = False


class ReportedState(Versioned):
    """Retained on ``state``: the device's half of its twin."""

    v: Literal[1] = version_field()
    device_id: DeviceId
    ts: Timestamp
    agent_version: Annotated[str, StringConstraints(max_length=64)]
    hardware: Name = "generic"
    model: ModelRef | None = None
    firmware: FirmwareRef | None = None
    slots: Annotated[
        dict[Annotated[str, StringConstraints(max_length=16)], Name], Field(max_length=8)
    ] = {}
    capabilities: Annotated[list[Name], Field(max_length=64)] = []
    health: Literal["starting", "ok", "degraded", "failed"] = "starting"
    health_detail: Text | None = None
    desired_version: Count = 0
    """The highest desired-state version the device has applied or rejected."""
    update: UpdateReport | None = None
    cert_not_after: Timestamp | None = None


# -------------------------------------------------------------- commands ----


class TargetRef(Message):
    """A signed artifact the device should run, named as in the TUF targets metadata."""

    kind: ArtifactKind
    name: Name
    version: Name
    target: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@/+-]{1,255}$")]


class DesiredState(Message):
    """The server's half of the twin, sent as the args of a ``set_desired`` command."""

    version: Count
    """Monotonic per device; a device ignores anything not newer than what it applied."""
    model: TargetRef | None = None
    firmware: TargetRef | None = None
    config: Annotated[dict[Token, Scalar], Field(max_length=64)] = {}
    rollout_id: Token | None = None
    shadow: TargetRef | None = None
    """A model to fetch, verify and run beside the active one, never switched to (a rollout's
    shadow step); absent: no shadow run.  Sent only when set, so other desired states
    still read on older agents (which refuse a shadow run, and its gates see no data)."""


class Command(Versioned):
    """Server to device on ``cmd``; each one is answered by a :class:`CommandAck`."""

    v: Literal[1] = version_field()
    id: Token
    name: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    args: Annotated[dict[Token, Any], Field(max_length=64)] = {}
    ts: Timestamp
    expires_at: Timestamp | None = None


class CommandAck(Versioned):
    """Device to server on ``ack``."""

    v: Literal[1] = version_field()
    device_id: DeviceId
    command_id: Token
    ts: Timestamp
    status: Literal["accepted", "done", "rejected", "failed"]
    detail: Text = ""
    result: Annotated[dict[Token, Scalar], Field(max_length=64)] = {}
