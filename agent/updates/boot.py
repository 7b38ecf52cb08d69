"""What the device does with an interrupted update when it (re)starts, before serving.

The daemon calls :func:`active_model_path` once at start: it settles the
journal first (a restart during probation counts against the update; past the
limit the previous slot is put back), then returns the package the pointer
names — checked against its recorded hash, with the fallback slot used if the
active one is damaged.  The device therefore always boots into a model that
passed its self-test at least once.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from . import machine
from .journal import JournalFile
from .slots import ModelSlots

log = logging.getLogger(__name__)

_settled: dict[Path, machine.Recovery | None] = {}
_lock = threading.Lock()


def journal_file(data_dir: Path) -> JournalFile:
    return JournalFile(data_dir / "updates" / "journal.json")


def recover_at_boot(data_dir: Path, now: float | None = None) -> machine.Recovery | None:
    """Settle the journal once per process (later calls return the same answer)."""
    key = data_dir.resolve()
    with _lock:
        if key in _settled:
            return _settled[key]
        result = _recover(data_dir, time.time() if now is None else now)
        _settled[key] = result
        return result


def _recover(data_dir: Path, now: float) -> machine.Recovery | None:
    journals = journal_file(data_dir)
    journal = journals.load()
    if journal is None:
        return None
    recovery = machine.recover(journal, now)
    if recovery.action == "none" and recovery.journal == journal:
        return recovery
    if journal.ref.kind == "model":
        slots = ModelSlots(data_dir)
        if recovery.action == "revert":
            to = journal.previous if journal.previous in ("a", "b") else None
            slots.revert(to)  # type: ignore[arg-type]
        elif recovery.action in ("switch", "probation") and journal.slot in ("a", "b"):
            slots.switch(journal.slot)  # type: ignore[arg-type]
    journals.save(recovery.journal)
    log.warning(
        "update %s %s interrupted in %s: %s",
        journal.ref.name,
        journal.ref.version,
        journal.phase,
        recovery.action,
    )
    return recovery


def active_model_path(data_dir: Path) -> Path | None:
    """The package the daemon should serve at start, or None on a device with no slot yet."""
    recover_at_boot(data_dir)
    slots = ModelSlots(data_dir)
    pointer = slots.pointer()
    if pointer is None:
        return None
    active = slots.slot(pointer.active, verify=True)
    if active is not None:
        return active.package
    fallback = slots.revert()
    if fallback is not None:
        log.error("active model slot %s is damaged; serving slot %s", pointer.active, fallback.name)
        return fallback.package
    return None
