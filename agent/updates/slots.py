"""Model A/B slots: two directories and one pointer that says which one serves.

    {data_dir}/models/a/<package>.efpkg + slot.json
    {data_dir}/models/b/<package>.efpkg + slot.json
    {data_dir}/models/active.json   {"active": "a", "previous": "b", "committed": true}

An update is only ever written into the slot that is *not* active; the switch
is one atomic rename of ``active.json``.  So at every instant the pointer names
a complete, verified package, and the previous one stays on disk as the
fallback until the next update overwrites it.  ``slot.json`` records the
package's SHA-256 so boot can tell a complete slot from a damaged one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from edgefleet_contract.errors import InstallError

from .journal import fsync_dir, write_atomic

log = logging.getLogger(__name__)

SlotName = Literal["a", "b"]
SLOTS: tuple[SlotName, SlotName] = ("a", "b")
POINTER = "active.json"
SLOT_RECORD = "slot.json"


class Pointer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    active: SlotName
    previous: SlotName | None = None
    committed: bool = True
    """False while the active slot is on probation."""


@dataclass(frozen=True)
class Slot:
    name: SlotName
    package: Path
    sha256: str


def other(name: SlotName) -> SlotName:
    return "b" if name == "a" else "a"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelSlots:
    """The slot directories of one data dir; every write is atomic and fsynced."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "models"

    @property
    def pointer_file(self) -> Path:
        return self.root / POINTER

    def pointer(self) -> Pointer | None:
        try:
            return Pointer.model_validate(json.loads(self.pointer_file.read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, ValidationError) as exc:
            log.error("damaged slot pointer %s: %s", self.pointer_file, exc)
            return None

    def _write_pointer(self, pointer: Pointer) -> None:
        write_atomic(self.pointer_file, pointer.model_dump_json().encode())

    def slot(self, name: SlotName, *, verify: bool = False) -> Slot | None:
        """The package in slot ``name`` if it is complete (and, with ``verify``, intact)."""
        directory = self.root / name
        try:
            record = json.loads((directory / SLOT_RECORD).read_bytes())
            package = directory / str(record["file"])
            sha256 = str(record["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if package.parent != directory or not package.is_file():
            return None
        if verify and _sha256(package) != sha256:
            log.error("slot %s is damaged: %s does not match its recorded hash", name, package)
            return None
        return Slot(name, package, sha256)

    def active(self, *, verify: bool = False) -> Slot | None:
        pointer = self.pointer()
        return self.slot(pointer.active, verify=verify) if pointer else None

    def inactive_name(self) -> SlotName:
        pointer = self.pointer()
        return other(pointer.active) if pointer else "a"

    def stage(self, source: Path, filename: str, sha256: str) -> Slot:
        """Copy a verified package into the inactive slot; the active one is never touched."""
        name = self.inactive_name()
        directory = self.root / name
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        target = directory / filename
        tmp = directory / f".{filename}.tmp"
        digest = hashlib.sha256()
        try:
            with source.open("rb") as src, tmp.open("wb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    digest.update(block)
                    dst.write(block)
                dst.flush()
                os.fsync(dst.fileno())
        except OSError as exc:
            raise InstallError(f"cannot stage the package into slot {name}: {exc}") from exc
        if digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise InstallError(f"the package changed while it was copied into slot {name}")
        os.replace(tmp, target)
        record = {"file": filename, "sha256": sha256}
        write_atomic(directory / SLOT_RECORD, json.dumps(record).encode())
        fsync_dir(self.root)
        return Slot(name, target, sha256)

    def switch(self, name: SlotName) -> None:
        """Make ``name`` active on probation; the old active slot becomes the fallback."""
        pointer = self.pointer()
        if pointer is not None and pointer.active == name:
            return
        if self.slot(name) is None:
            raise InstallError(f"slot {name} holds no complete package; refusing to switch to it")
        previous = pointer.active if pointer else None
        self._write_pointer(Pointer(active=name, previous=previous, committed=False))

    def commit(self) -> None:
        pointer = self.pointer()
        if pointer is not None and not pointer.committed:
            self._write_pointer(pointer.model_copy(update={"committed": True}))

    def revert(self, to: SlotName | None = None) -> Slot | None:
        """Point back at the previous slot (or ``to``); None when there is none to go back to."""
        pointer = self.pointer()
        if pointer is None:
            return None
        target = to or pointer.previous
        if target is None or (target == pointer.active and to is None):
            return None
        slot = self.slot(target, verify=True)
        if slot is None:
            return None
        if pointer.active != target:
            self._write_pointer(Pointer(active=target, previous=None, committed=True))
        return slot

    def install_initial(self, package: Path, sha256: str | None = None) -> Slot:
        """First boot: put a bundled package into slot ``a`` and make it active."""
        digest = sha256 or _sha256(package)
        slot = self.stage(package, package.name, digest)
        self._write_pointer(Pointer(active=slot.name, previous=None, committed=True))
        return slot

    def describe(self) -> dict[str, str]:
        """``ReportedState.slots``: which slot is active, and what each holds."""
        out: dict[str, str] = {}
        pointer = self.pointer()
        if pointer is not None:
            out["active"] = pointer.active
        for name in SLOTS:
            slot = self.slot(name)
            if slot is not None:
                out[name] = slot.package.name[:128]
        return out
