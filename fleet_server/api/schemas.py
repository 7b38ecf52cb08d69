"""Response and request bodies of the REST API (the OpenAPI schema comes from here)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, field_validator

from edgefleet_contract.ids import DEVICE_ID_PATTERN
from edgefleet_contract.messages import DesiredState, ReportedState

from ..store.base import Device
from ..twin import TwinStatus, twin_status

MAX_OFFSET = 10_000_000
"""Pagination offsets stop here (SQLite integers are 64-bit; nobody pages further)."""

MAX_ARGS_BYTES = 16 * 1024
MAX_ARGS_DEPTH = 8


def _small_json(value: dict[str, Any]) -> dict[str, Any]:
    """Command arguments travel over MQTT to small devices: keep them shallow and small."""
    if _depth(value) > MAX_ARGS_DEPTH:
        raise ValueError(f"nested deeper than {MAX_ARGS_DEPTH} levels")
    if len(json.dumps(value)) > MAX_ARGS_BYTES:
        raise ValueError(f"larger than {MAX_ARGS_BYTES} bytes as JSON")
    return value


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_ARGS_DEPTH:
        return level
    children = (
        value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    )
    return max((_depth(v, level + 1) for v in children), default=level)


ArgKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@+-]{1,128}$")]
CommandArgs = Annotated[dict[ArgKey, Any], Field(max_length=64), AfterValidator(_small_json)]

# Tags and groups are what selectors choose devices by, so they are limited to
# what the selector language can spell (no spaces, parentheses or '=' in keys).
TagKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
TagValue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@/+-]{0,128}$")]
GroupName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Tags = Annotated[
    dict[TagKey, TagValue],
    Field(max_length=64, description="keys: A-Z a-z 0-9 _ . -; values also : @ / +"),
]


class DeviceOut(BaseModel):
    id: str
    name: str
    tags: dict[str, str]
    groups: list[str]
    state: str
    online: bool
    created_at: float
    enrolled_at: float | None
    last_seen: float | None
    cert_not_after: float | None
    model: str | None
    firmware: str | None
    agent_version: str | None
    health: str | None
    twin: TwinStatus

    @classmethod
    def of(cls, d: Device) -> DeviceOut:
        r = d.reported
        return cls(
            id=d.id,
            name=d.name,
            tags=d.tags,
            groups=list(d.groups),
            state=d.state,
            online=d.online,
            created_at=d.created_at,
            enrolled_at=d.enrolled_at,
            last_seen=d.last_seen,
            cert_not_after=d.cert_not_after,
            model=f"{r.model.name}@{r.model.version}" if r and r.model else None,
            firmware=r.firmware.version if r and r.firmware else None,
            agent_version=r.agent_version if r else None,
            health=r.health if r else None,
            twin=twin_status(d.desired, r),
        )


T = TypeVar("T")


class Items(BaseModel, Generic[T]):
    """The one envelope of every list the API answers: ``{"items": [...], "total": N}``.

    ``total`` counts what matched (more than ``items`` when a limit cut the list),
    so a client can tell a complete list from a first page.  Paged lists
    (devices) add their ``offset`` and ``limit``.
    """

    items: list[T]
    total: int


def items(rows: Sequence[T], total: int | None = None) -> Items[T]:
    """Wrap ``rows``; ``total`` defaults to their number (a list no limit cut)."""
    return Items[T](items=list(rows), total=len(rows) if total is None else total)


class DevicePage(BaseModel):
    items: list[DeviceOut]
    total: int
    offset: int
    limit: int


class DeviceCreate(BaseModel):
    id: str = Field(pattern=DEVICE_ID_PATTERN, description="1-64 of A-Z a-z 0-9 _ -")
    name: str | None = Field(default=None, max_length=128)
    tags: Tags = Field(default_factory=dict)


class DevicePatch(BaseModel):
    """Fields left out are unchanged; ``tags`` and ``groups`` replace the whole set."""

    name: str | None = Field(default=None, max_length=128)
    tags: Tags | None = None
    groups: list[GroupName] | None = Field(default=None, max_length=64)


class EnrollmentTokenOut(BaseModel):
    device_id: str
    token: str
    expires_at: float
    enroll_command: str


class TwinOut(BaseModel):
    device_id: str
    status: TwinStatus
    desired: DesiredState | None
    reported: ReportedState | None
    reported_at: float | None
    refusal: str | None = None
    """Why the device did not take the newest desired state (its answer, or its update's
    error); None when it took it or has not answered yet."""


def _path_part(text: str) -> str:
    """A name or version must be able to stand in a TUF target path: the default target is
    built from them, so what could not be one is refused here (422), not when the twin is
    built (that was a 500)."""
    if not re.fullmatch(r"[A-Za-z0-9_.@+-]{1,128}", text):
        raise ValueError(
            f"{text!r} cannot be part of a TUF target path: use 1-128 letters, digits or _ . @ + -"
        )
    return text


PathPart = Annotated[str, AfterValidator(_path_part)]


class ArtifactIn(BaseModel):
    name: PathPart
    version: PathPart
    target: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.@/+-]{1,255}$",
        description="the TUF target path; derived from name and version when left out",
    )


class DesiredIn(BaseModel):
    """The whole desired state (PUT replaces it; the server assigns the version)."""

    model: ArtifactIn | None = None
    firmware: ArtifactIn | None = None
    config: dict[str, Any] = Field(default_factory=dict)


TWIN_COMMANDS = frozenset({"set_desired"})
"""Commands only the server sends, for the twin: a raw one would skip its validation and
versioning (a desired version of 2**63-1 used to wedge a device for good)."""


class CommandIn(BaseModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    args: CommandArgs = Field(default_factory=dict)
    ttl_s: float = Field(default=3600, gt=0, le=7 * 86400)

    @field_validator("name")
    @classmethod
    def _not_the_twin(cls, name: str) -> str:
        if name in TWIN_COMMANDS:
            raise ValueError(
                f"{name!r} is sent by the server for the twin; set the desired state with "
                "PUT /api/v1/devices/{id}/twin/desired instead"
            )
        return name


class CommandOut(BaseModel):
    id: str
    device_id: str
    name: str
    args: dict[str, Any]
    created_at: float
    actor: str
    status: str
    detail: str
    acked_at: float | None


class EnrollIn(BaseModel):
    token: str = Field(min_length=8, max_length=256)
    csr_pem: str = Field(min_length=64, max_length=16_384)


class RenewIn(BaseModel):
    cert_pem: str = Field(min_length=64, max_length=16_384)
    csr_pem: str = Field(min_length=64, max_length=16_384)
    signature_b64: str = Field(min_length=16, max_length=1024)


class EnrollOut(BaseModel):
    device_id: str
    cert_pem: str
    ca_pem: str
    broker_host: str
    broker_port: int
    tuf_root: str | None = None
    """The current TUF root.json (text): the device's trust anchor for updates."""
