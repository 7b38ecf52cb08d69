"""Agent settings: ``agent.toml`` in the data dir (or ``--config``) plus ``EDGE_AGENT_*``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet_common.config import FileSettings

Port = Annotated[int, Field(ge=1, le=65535)]
Positive = Annotated[float, Field(gt=0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalApiSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    """Loopback by default: the prediction API is for apps on this device only."""
    port: Annotated[int, Field(ge=0, le=65535)] = 8181
    unix_socket: Path | None = None
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    max_batch: Annotated[int, Field(ge=1)] = 256


class SpoolSettings(Section):
    max_bytes: Annotated[int, Field(ge=64 * 1024)] = 64 * 1024 * 1024
    max_age_s: Positive = 7 * 86400
    drain_rate_per_s: Positive = 50.0
    drain_burst: Annotated[int, Field(ge=1)] = 100
    max_inflight: Annotated[int, Field(ge=1, le=100)] = 20


class BrokerOverride(Section):
    """Normally the broker address comes from enrollment; override it here if needed."""

    host: str | None = None
    port: Port | None = None
    endpoints: list[str] = []
    """More nodes of a broker cluster (``host:port``), tried in turn after the first one
    when it cannot be reached; the spool holds telemetry meanwhile."""
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30

    @field_validator("endpoints")
    @classmethod
    def _host_ports(cls, values: list[str]) -> list[str]:
        for value in values:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"broker.endpoints: {value!r} is not host:port")
        return values

    def alternates(self) -> tuple[tuple[str, int], ...]:
        return tuple(
            (host.strip("[]"), int(port))
            for host, _, port in (e.rpartition(":") for e in self.endpoints)
        )


class FeedbackSettings(Section):
    max_samples: Annotated[int, Field(ge=0)] = 5000
    """Labelled samples kept for federated training; the oldest go first."""
    prediction_cache: Annotated[int, Field(ge=0)] = 10_000
    """Recent predictions remembered so feedback can refer to them by id."""


class DriftSettings(Section):
    """``[drift]``: when input drift is tested and when it alerts (see agent/drift_monitor.py)."""

    interval_s: Annotated[float, Field(ge=0, le=86400)] = 300.0
    """At most one drift test per this many seconds (the rows in between are sampled)."""
    min_samples: Annotated[int, Field(ge=20, le=1024)] = 200
    """Rows a window needs before it is tested."""
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.01
    min_effect: Annotated[float, Field(ge=0, le=1)] = 0.0
    raise_after: Annotated[int, Field(ge=1, le=1000)] = 3
    clear_after: Annotated[int, Field(ge=1, le=1000)] = 3
    burn_in_rows: Annotated[int, Field(ge=100, le=1_000_000)] = 2000
    """Rows after each install that become this device's baseline ("its normal")."""


class UpdateSettings(Section):
    """``[updates]``: how the device installs models and firmware (see agent/updates)."""

    server_url: str | None = None
    """TUF metadata/targets come from ``{server_url}/tuf/``; default: the enrollment server."""
    probation_s: Annotated[float, Field(ge=0, le=7 * 86400)] = 600.0
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.05
    min_inferences: Annotated[int, Field(ge=1)] = 20
    """Probation judges the error rate only after this many inferences."""
    max_restarts: Annotated[int, Field(ge=0, le=100)] = 2
    """Agent restarts tolerated during probation before the previous version comes back."""
    retry_for_s: Annotated[float, Field(ge=0, le=7 * 86400)] = 1800.0
    """How long an update keeps retrying a server it cannot reach (backoff 5 s doubling to
    5 min, jittered) before it fails; a newer desired state ends the wait at once."""
    firmware_handler: Literal["ab-slot", "rauc", "swupdate", "mender", "command", "none"] = (
        "ab-slot"
    )
    firmware_commands: dict[str, list[str]] = {}
    """Per-step argv overrides (install, try_boot, reboot, commit, rollback, version);
    ``{image}`` is replaced by the image path."""


class AgentSettings(FileSettings):
    env_prefix: ClassVar[str] = "EDGE_AGENT_"

    data_dir: Path = Path("/var/lib/edgefleet")
    """Identity, spool, model slots and labelled samples."""
    model: Path | None = None
    """A model package to serve when no model slot is active yet (first boot)."""
    threads: Annotated[int, Field(ge=1, le=64)] = 1
    telemetry_interval_s: Annotated[float, Field(ge=0.05, le=3600)] = 10.0
    renew_check_s: Annotated[float, Field(ge=0.05, le=3600)] = 60.0
    """How often the daemon asks whether its certificate is due for renewal (at 2/3 of it)."""
    hardware: str = "generic"
    firmware_version: str = "0.0.0"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"
    """auto: text on a terminal, JSON lines otherwise (journald, files, pipes)."""
    local_api: LocalApiSettings = LocalApiSettings()
    spool: SpoolSettings = SpoolSettings()
    broker: BrokerOverride = BrokerOverride()
    feedback: FeedbackSettings = FeedbackSettings()
    drift: DriftSettings = DriftSettings()
    updates: UpdateSettings = UpdateSettings()
