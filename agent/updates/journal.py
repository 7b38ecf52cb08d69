"""The update journal: one small JSON file that says where an update stands.

It is rewritten (temp file, fsync, rename, fsync of the directory) after every
step, *before* the step's effects are relied on, so whatever instant the power
goes, the next start reads either the previous step or the new one — never a
torn record — and :mod:`.machine` decides from it whether to resume or revert.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet_contract.messages import Sha256, TargetRef, UpdatePhase

log = logging.getLogger(__name__)

TERMINAL: frozenset[str] = frozenset({"committed", "rolled_back", "failed"})
"""Phases after which nothing remains to be done."""


class Journal(BaseModel):
    """The persisted state of the device's one update in flight (or its last one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    desired_version: Annotated[int, Field(ge=0)]
    rollout_id: str | None = None
    ref: TargetRef
    phase: UpdatePhase = "pending"
    progress: Annotated[float, Field(ge=0, le=1)] = 0.0
    error: str | None = None
    sha256: Sha256 | None = None
    """The artifact hash TUF vouched for; nothing else is ever staged."""
    length: Annotated[int, Field(ge=0)] | None = None
    slot: str | None = None
    """The slot the update was staged into."""
    previous: str | None = None
    """The slot (or firmware version) that served before the switch."""
    probation_s: Annotated[float, Field(ge=0)] = 600.0
    max_restarts: Annotated[int, Field(ge=0)] = 2
    """Policy captured when the update began, so a restart judges it by the same rules."""
    restarts: Annotated[int, Field(ge=0)] = 0
    """Times the agent came back up while this update was switching or on probation."""
    clean_stop: bool = False
    """The daemon was stopped on purpose mid-probation: the next start does not count it."""
    probation_until: float | None = None
    bytes_transferred: Annotated[int, Field(ge=0)] = 0
    delta: Literal["none", "used", "rejected", "unavailable"] = "none"
    attempts: Annotated[int, Field(ge=0)] = 0
    started_at: float
    updated_at: float

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX: the directory entry needs its own sync)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class JournalFile:
    """``{data_dir}/updates/journal.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Journal | None:
        """The journal, or None when there is none or it is unreadable (logged, not fatal).

        A damaged journal cannot be trusted to revert anything, so the device falls
        back to what the slot pointer says, which is written just as carefully.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return Journal.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            log.error("ignoring damaged update journal %s: %s", self.path, exc)
            return None

    def save(self, journal: Journal) -> None:
        write_atomic(self.path, journal.model_dump_json(indent=1).encode())
