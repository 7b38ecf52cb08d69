"""Fleet server settings: ``fleet.toml`` plus ``FLEET_*`` environment overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from edgefleet_common.config import FileSettings

Port = Annotated[int, Field(ge=1, le=65535)]
ReplicaName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]

SERVER_IDENTITY = "fleet.server"
"""CN of the server's own MQTT client certificate.  The dot keeps it outside the
device-id alphabet, so no device can ever be enrolled under the server's name."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiSettings(Section):
    host: str = "127.0.0.1"
    port: Port = 8080
    public_url: str | None = None
    """Where devices and operators reach the API (enrollment hands this out)."""
    session_ttl_s: Annotated[int, Field(ge=60)] = 12 * 3600
    token_ttl_s: Annotated[int, Field(ge=60)] = 90 * 86400
    max_token_ttl_s: Annotated[int, Field(ge=60)] = 90 * 86400
    """No API token or console session lives longer, whatever it asked for when it was
    made: lowering this also cuts the tokens already issued."""
    login_attempts_per_minute: Annotated[int, Field(ge=1)] = 10

    @model_validator(mode="after")
    def _within_max(self) -> ApiSettings:
        for name in ("session_ttl_s", "token_ttl_s"):
            if getattr(self, name) > self.max_token_ttl_s:
                raise ValueError(f"{name} is over max_token_ttl_s ({self.max_token_ttl_s} s)")
        return self


class BrokerSettings(Section):
    mode: Literal["managed", "external", "rabbitmq"] = "managed"
    """managed: the server runs mosquitto; external: any MQTT broker configured by hand
    (docs/operations.md); rabbitmq: a RabbitMQ cluster whose users the server manages."""
    host: str = "127.0.0.1"
    """Host devices and the server connect to."""
    port: Port = 8883
    bind: str = "127.0.0.1"
    """Address the managed broker listens on."""
    san_hosts: list[str] = ["localhost"]
    san_ips: list[str] = ["127.0.0.1", "::1"]
    mosquitto_bin: str = "mosquitto"
    protocol: Literal["5", "3.1.1"] = "5"
    replicas: list[ReplicaName] = []
    """Names of further fleet-server processes (``replica`` of each) the managed broker's
    ACL lets see the whole fleet, as ``fleet.server.<name>``."""
    # external broker only
    url: str | None = None
    """``mqtts://host:8883`` (TLS) or ``mqtt://host:1883``; sets host, port and TLS."""
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    max_connections: Annotated[int, Field(ge=-1)] = -1
    # clustered broker (mode = "rabbitmq")
    endpoints: list[str] = []
    """More MQTT nodes (``host:port``) after ``host``/``port``: the server's session fails over."""
    amqp_endpoints: list[str] = []
    """AMQPS listeners (``host:port``) of the cluster's nodes; ingest consumes from any."""
    management_urls: list[str] = []
    """Management API of the nodes (``https://node:15671``); users and rights are set here."""
    admin_user: str | None = None
    admin_password: SecretStr | None = None

    @model_validator(mode="after")
    def _from_url(self) -> BrokerSettings:
        if self.mode == "rabbitmq":
            self._check_cluster()
        if self.url is None:
            return self
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("url must look like mqtts://host:8883 or mqtt://host:1883")
        self.host = parts.hostname
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        return self

    def _check_cluster(self) -> None:
        missing = [
            name
            for name in ("amqp_endpoints", "management_urls", "admin_user", "admin_password")
            if not getattr(self, name)
        ]
        if missing:
            raise ValueError(f'broker.mode = "rabbitmq" needs broker.{", broker.".join(missing)}')
        if self.protocol != "3.1.1":
            raise ValueError(
                'broker.mode = "rabbitmq" speaks MQTT 3.1.1: set broker.protocol = "3.1.1"'
            )
        for value in [*self.endpoints, *self.amqp_endpoints]:
            host_port(value)

    @property
    def tls(self) -> bool:
        return self.url is None or self.url.startswith("mqtts:")


def host_port(value: str) -> tuple[str, int]:
    """``"host:port"`` -> ``("host", port)``, with an error that names the value."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]"), int(port)


class EnrollmentSettings(Section):
    token_ttl_s: Annotated[int, Field(ge=60)] = 24 * 3600
    cert_validity_s: Annotated[int, Field(ge=300)] = 7 * 86400
    """Device certificates are short-lived; agents renew at two thirds of this."""


class TelemetrySettings(Section):
    raw_retention_s: Annotated[int, Field(ge=3600)] = 7 * 86400
    rollup_retention_s: Annotated[int, Field(ge=3600)] = 90 * 86400
    queue_size: Annotated[int, Field(ge=100)] = 50_000
    batch_size: Annotated[int, Field(ge=1)] = 500
    max_payload: Annotated[int, Field(ge=1024)] = 256 * 1024
    device_batches_per_s: Annotated[float, Field(gt=0)] = 60.0
    """Per-device telemetry quota: sustained batches a second (above the agent's drain rate)."""
    device_batch_burst: Annotated[int, Field(ge=1)] = 600
    device_bytes_per_s: Annotated[int, Field(ge=1024)] = 256 * 1024
    """Per-device telemetry quota: sustained bytes a second; over it batches are refused
    with reason ``quota`` (``edgefleet_ingest_rejected_total{reason="quota"}``)."""
    device_bytes_burst: Annotated[int, Field(ge=1024)] = 16 * 1024 * 1024


class ArtifactSettings(Section):
    max_upload_bytes: Annotated[int, Field(ge=1024)] = 512 * 1024 * 1024
    """Largest model package or firmware bundle the upload routes accept."""


class TufSettings(Section):
    """Signature lifetimes; each role is re-signed once half of its lifetime is left."""

    root_expiry_s: Annotated[int, Field(ge=86400)] = 365 * 86400
    targets_expiry_s: Annotated[int, Field(ge=3600)] = 30 * 86400
    snapshot_expiry_s: Annotated[int, Field(ge=3600)] = 7 * 86400
    timestamp_expiry_s: Annotated[int, Field(ge=300)] = 86400


class DatabaseSettings(Section):
    """Where the store lives: a SQLite file (the embedded default) or PostgreSQL."""

    url: str = ""
    """Empty: ``fleet.db`` in the data directory.  A path (or ``sqlite:///path``) is a
    SQLite file; ``postgresql://user@host:5432/fleet`` a PostgreSQL database."""

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        scheme = v.split("://", 1)[0].lower() if "://" in v else ""
        if scheme and scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(
                f"database url scheme {scheme!r} is not supported: use a SQLite path or "
                "postgresql://user@host:port/database"
            )
        return v


class ServerSettings(FileSettings):
    env_prefix: ClassVar[str] = "FLEET_"

    data_dir: Path = Path("var/fleet")
    """CA and keys, the SQLite database (unless ``[database] url`` names another), the
    managed broker's files and artifacts."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"
    """auto: text on a terminal, JSON lines otherwise (journald, files, pipes)."""
    replica: ReplicaName | None = None
    """This process's name among several sharing one PostgreSQL database (``a``,
    ``ingest-1``...): its MQTT identity is ``fleet.server.<replica>`` (the broker forces
    client id = certificate name, so each process needs its own).  Unset: one process,
    identity ``fleet.server``."""
    api: ApiSettings = ApiSettings()
    broker: BrokerSettings = BrokerSettings()
    enrollment: EnrollmentSettings = EnrollmentSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    artifacts: ArtifactSettings = ArtifactSettings()
    tuf: TufSettings = TufSettings()
    database: DatabaseSettings = DatabaseSettings()

    @property
    def database_url(self) -> str:
        """The store to open: ``[database] url``, or ``fleet.db`` in the data directory."""
        return self.database.url or str(self.data_dir / "fleet.db")

    @property
    def mqtt_identity(self) -> str:
        return f"{SERVER_IDENTITY}.{self.replica}" if self.replica else SERVER_IDENTITY

    @property
    def api_url(self) -> str:
        return self.api.public_url or f"http://{self.api.host}:{self.api.port}"
