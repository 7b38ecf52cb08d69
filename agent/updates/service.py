"""The daemon's handle on updates: one worker thread, the boot model, the reported fields.

The daemon wires it in five places (see ``agent/daemon.py``): the boot model
(:meth:`DeviceUpdates.boot_model_path`), ``set_desired`` (:meth:`submit`),
``ReportedState`` (:meth:`report`, :meth:`firmware_ref`, :meth:`slots`), every
telemetry window (:meth:`record_window`, which feeds probation's health
check), and start/stop.  Updates run on their own thread so predictions keep
being served and commands keep being answered while an artifact downloads.
"""

from __future__ import annotations

import contextlib
import logging
import queue
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from edgefleet_common.background import BackgroundThread
from edgefleet_contract.errors import ConfigError, EdgefleetError
from edgefleet_contract.messages import DesiredState, FirmwareRef, TargetRef, UpdateReport

from ..config import AgentSettings
from ..fields import carried_over
from ..metrics import WindowStats
from ..runtime import Model
from .boot import active_model_path
from .firmware import ABSlotHandler, CommandHandler, InstallHandler
from .health import HealthTally
from .journal import Journal
from .slots import ModelSlots
from .updater import ModelHost, UpdatePolicy, Updater

log = logging.getLogger(__name__)

Job = tuple[TargetRef, int, str | None, bool]
"""A target, its desired-state version, the rollout, and whether it is to run in the shadow."""


class ShadowHost(ModelHost, Protocol):
    """A model host that can also run a candidate beside the active model."""

    @property
    def shadow(self) -> object | None: ...

    def start_shadow(self, candidate: Model) -> object: ...

    def stop_shadow(self) -> object: ...


def make_handler(settings: AgentSettings) -> InstallHandler | None:
    """The firmware install handler ``[updates] firmware_handler`` names (None: firmware off)."""
    u = settings.updates
    root = settings.data_dir / "firmware"
    if u.firmware_handler == "none":
        return None
    if u.firmware_handler == "ab-slot":
        return ABSlotHandler(root, initial_version=settings.firmware_version)
    commands = {step: tuple(argv) for step, argv in u.firmware_commands.items()}
    try:
        if u.firmware_handler == "command":
            return CommandHandler(
                "command", root, commands, initial_version=settings.firmware_version
            )
        return CommandHandler.preset(u.firmware_handler, root, **commands)
    except EdgefleetError as exc:
        raise ConfigError(f"updates.firmware_commands: {exc}") from exc


class DeviceUpdates:
    def __init__(
        self,
        settings: AgentSettings,
        server_url: str,
        host: ShadowHost,
        *,
        on_change: Callable[[], None],
    ) -> None:
        u = settings.updates
        self.settings = settings
        self.health = HealthTally()
        self.firmware = make_handler(settings)
        self._on_change = on_change
        self.host = host
        self.updater = Updater(
            settings.data_dir,
            u.server_url or server_url,
            host=host,
            health=self.health,
            firmware=self.firmware,
            hardware=settings.hardware,
            policy=carried_over(UpdatePolicy, u),
            on_change=self._changed,
            superseded=self._superseded,
        )
        self.slots_store = ModelSlots(settings.data_dir)
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=16)
        self._worker = BackgroundThread("updates", self._run)

    def _superseded(self) -> bool:
        """A different target of the same kind waits in the queue (the same one again, or
        the firmware half of the same desired state, does not end a retry wait)."""
        current = self.updater.journal
        if current is None:
            return False
        with self._queue.mutex:
            waiting = [job for job in self._queue.queue if job is not None]
        return any(
            ref.kind == current.ref.kind and ref != current.ref and not shadow
            for ref, _, _, shadow in waiting
        )

    def _changed(self, journal: Journal) -> None:
        self._on_change()

    # ---------------------------------------------------------------- boot --

    def boot_model_path(self, fallback: Path | None) -> Path | None:
        """The active slot's package; on first boot ``fallback`` is installed into slot a."""
        path = active_model_path(self.settings.data_dir)
        if path is not None or fallback is None:
            return path
        try:
            return self.slots_store.install_initial(fallback).package
        except (OSError, EdgefleetError) as exc:
            log.error("cannot put %s into a model slot (%s); serving it from there", fallback, exc)
            return fallback

    # ------------------------------------------------------------ commands --

    def submit(self, desired: DesiredState) -> str:
        """Queue the desired model and firmware; returns what was queued, for the ack."""
        queued = []
        jobs = [(ref, False) for ref in (desired.model, desired.firmware) if ref is not None]
        if desired.shadow is not None:
            jobs.append((desired.shadow, True))
        elif self.host.shadow is not None:
            self.host.stop_shadow()  # the desired state no longer asks for a shadow run
        for ref, shadow in jobs:
            try:
                self._queue.put_nowait((ref, desired.version, desired.rollout_id, shadow))
            except queue.Full:
                return "update queue full; try again later"
            queued.append(f"{'shadow ' if shadow else ''}{ref.kind} {ref.name} {ref.version}")
        return "update queued: " + ", ".join(queued) if queued else ""

    def _run(self) -> None:
        try:
            self.updater.resume()
        except Exception:
            log.exception("resuming the interrupted update failed")
        while (job := self._queue.get()) is not None:
            ref, version, rollout, shadow = job
            if shadow:
                self._shadow(ref)
                continue
            last = self.updater.journal
            if (
                last is not None
                and last.done
                and last.ref == ref
                and last.desired_version >= version
            ):
                continue  # this desired version was already carried out (or refused)
            try:
                self.updater.run(ref, version, rollout)
            except Exception:
                log.exception("update to %s %s crashed", ref.name, ref.version)

    def _shadow(self, ref: TargetRef) -> None:
        """Start the shadow run of ``ref``; a refused or broken candidate is logged and
        leaves the active model alone (the rollout's shadow gates then see no data)."""
        try:
            self.host.start_shadow(self.updater.stage_shadow(ref))
        except Exception:
            log.exception("cannot run %s %s in the shadow", ref.name, ref.version)

    def start(self, desired: DesiredState | None = None) -> None:
        """Resume an interrupted update, then make sure ``desired`` (persisted) is carried out:
        a power cut between acknowledging ``set_desired`` and starting the update must
        not lose it, since the server will not send the same version again."""
        if desired is not None:
            self.submit(desired)
        self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.updater.stop_event.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._worker.stop(timeout)

    # ------------------------------------------------------------- reports --

    def record_window(self, window: WindowStats | None) -> None:
        if window is not None:
            self.health.add_window(window.inference)

    def report(self) -> UpdateReport | None:
        return self.updater.report()

    def firmware_ref(self) -> FirmwareRef | None:
        if self.firmware is None:
            return None
        try:
            version = self.firmware.current_version()[:128] or "unknown"
            slot = self.firmware.current_slot()
        except EdgefleetError as exc:
            log.warning("cannot read the firmware version: %s", exc)
            return None
        return FirmwareRef(version=version, slot=slot, hardware=self.settings.hardware)

    def slots(self) -> dict[str, str]:
        return self.slots_store.describe()
