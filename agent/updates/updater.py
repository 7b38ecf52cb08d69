"""The updater: drives :mod:`.machine` through the real world, one phase at a time.

For each phase it does the I/O (TUF, download, slots, the model service, the
firmware handler), asks the machine for the next journal, persists it, and
tells the daemon (``on_change``) so the state is re-published.  Any error ends
the update with the reason in the journal (and so in ``UpdateReport.error``);
an error after the switch first puts the previous model or firmware back.

Except a server that cannot be reached: a whole wave asking for the same
metadata at once, a proxy restarting, a flaky uplink.  Such a
:class:`DownloadFailed` is retried with capped exponential backoff and full
jitter (so a fleet does not retry in step) for up to ``retry_for_s``, the
wait shown in ``UpdateReport.error`` while the phase stays where it was; a
newer desired state ends the wait at once.
"""

from __future__ import annotations

import logging
import posixpath
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edgefleet_contract.errors import (
    DownloadFailed,
    EdgefleetError,
    InstallError,
    UpdateError,
)
from edgefleet_contract.firmware import read_bundle
from edgefleet_contract.messages import TargetRef, UpdatePhase, UpdateReport

from ..runtime import Model, available_runtimes
from . import machine
from .artifacts import Artifacts
from .boot import recover_at_boot
from .firmware import InstallHandler, check_bundle
from .journal import Journal, JournalFile
from .machine import HealthCounters
from .slots import ModelSlots, Slot
from .targets import SignedTarget, Stopped

if TYPE_CHECKING:
    import httpx

    from .trust import TrustedRepository

log = logging.getLogger(__name__)


class ModelHost(Protocol):
    """What the updater needs from the daemon's model service (``agent.serving.ModelService``)."""

    @property
    def model(self) -> Model | None: ...

    def load(self, path: Path) -> Model: ...

    def activate(self, model: Model) -> Model | None: ...


@dataclass(frozen=True)
class UpdatePolicy:
    probation_s: float = 600.0
    max_restarts: int = 2
    max_error_rate: float = 0.05
    min_inferences: int = 20
    poll_s: float = 1.0
    download_attempts: int = 3
    retry_s: float = 2.0
    retry_for_s: float = 1800.0
    """How long a device keeps retrying a server it cannot reach before the update fails."""
    backoff_s: float = 5.0
    backoff_max_s: float = 300.0


class Updater:
    def __init__(
        self,
        data_dir: Path,
        server_url: str,
        *,
        host: ModelHost,
        health: Callable[[], HealthCounters],
        firmware: InstallHandler | None = None,
        hardware: str = "generic",
        policy: UpdatePolicy | None = None,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[Journal], None] | None = None,
        superseded: Callable[[], bool] = lambda: False,
    ) -> None:
        self.data_dir = data_dir
        self.server_url = server_url.rstrip("/")
        self.host = host
        self.health = health
        self.firmware = firmware
        self.hardware = hardware
        self.policy = policy or UpdatePolicy()
        # The HTTP client and the TUF repository are made when the first update needs them:
        # a device that only serves never imports httpx or python-tuf (see .targets).
        self._client = client
        self._trust: TrustedRepository | None = None
        self.clock = clock
        self.on_change = on_change or (lambda journal: None)
        self.superseded = superseded
        """True once a newer desired state waits: a retry wait gives up for it."""
        self.slots = ModelSlots(data_dir)
        self.work = data_dir / "updates"
        self.journal_file = JournalFile(self.work / "journal.json")
        self.stop_event = threading.Event()
        self.artifacts = Artifacts(self.work, lambda: self.client, self.slots, self.stop_event)
        self.journal: Journal | None = self.journal_file.load()
        self._candidate: Model | None = None
        self._previous_model: Model | None = None
        self._last_progress = 0.0

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0))
        return self._client

    @property
    def trust(self) -> TrustedRepository:
        if self._trust is None:
            from .trust import TrustedRepository

            self._trust = TrustedRepository(
                self.data_dir, self.server_url, self.client, clock=self.clock
            )
        return self._trust

    # ------------------------------------------------------------ reports --

    def report(self) -> UpdateReport | None:
        j = self.journal
        if j is None:
            return None
        return UpdateReport(
            desired_version=j.desired_version,
            kind=j.ref.kind,
            target=j.ref.target,
            phase=j.phase,
            progress=j.progress,
            error=j.error,
            ts=j.updated_at,
            bytes_transferred=j.bytes_transferred,
            delta_used=j.delta == "used",
        )

    def _save(self, journal: Journal) -> Journal:
        self.journal_file.save(journal)
        self.journal = journal
        try:
            self.on_change(journal)
        except Exception:
            log.exception("update progress report failed")
        return journal

    # ------------------------------------------------------------ entry --

    def resume(self) -> Journal | None:
        """At daemon start: continue (or finish reverting) an update a restart interrupted."""
        if self.firmware is not None:
            self.firmware.boot_check()  # the (simulated) bootloader ran before us
        recovery = recover_at_boot(self.data_dir, self.clock())
        if recovery is None:
            return self.journal
        journal = recovery.journal
        self.journal = journal
        if recovery.action == "none":
            return journal
        if recovery.action == "revert":
            return self._fail(journal, journal.error or "reverted at boot")
        return self._drive(self._save(journal))

    def run(self, ref: TargetRef, desired_version: int, rollout_id: str | None = None) -> Journal:
        """Install ``ref`` (blocking; call it from a worker thread) and return the final journal."""
        previous = self.journal
        if (
            previous is not None
            and previous.ref == ref
            and previous.phase == "committed"
            and self._already_running(previous)
        ):
            return previous
        journal = machine.begin(
            ref,
            desired_version,
            rollout_id,
            self.clock(),
            probation_s=self.policy.probation_s,
            max_restarts=self.policy.max_restarts,
        )
        return self._drive(self._save(journal))

    def _already_running(self, journal: Journal) -> bool:
        if journal.ref.kind == "model":
            active = self.slots.active()
            return active is not None and active.sha256 == journal.sha256
        return self.firmware is not None and self.firmware.current_version() == journal.ref.version

    # ------------------------------------------------------------ driving --

    def _drive(self, journal: Journal) -> Journal:
        steps: dict[UpdatePhase, Callable[[Journal], Journal]] = {
            "pending": self._check,
            "downloading": self._download,
            "verifying": self._verify,
            "staging": self._stage,
            "self_test": self._self_test,
            "switching": self._switch,
            "probation": self._probation,
        }
        retries = 0
        failing_since: float | None = None
        while not journal.done:
            try:
                journal = self._save(steps[journal.phase](journal))
                retries, failing_since = 0, None
            except Stopped:
                if journal.phase in machine.ACTIVE_TOUCHED:
                    journal = self._save(journal.model_copy(update={"clean_stop": True}))
                return journal
            except DownloadFailed as exc:
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                gave_up = self._give_up(exc, now - failing_since)
                if gave_up is not None:
                    return self._fail(journal, gave_up)
                try:
                    journal = self._wait_to_retry(journal, str(exc), retries)
                except Stopped:
                    return journal
                retries += 1
            except EdgefleetError as exc:
                return self._fail(journal, str(exc))
            except Exception as exc:
                log.exception("update step %s crashed", journal.phase)
                return self._fail(journal, f"internal error in {journal.phase}: {exc!r}")
        self._cleanup(journal)
        return journal

    def _give_up(self, exc: DownloadFailed, failing_for: float) -> str | None:
        """Why the update should fail now instead of retrying ``exc``, or None to retry."""
        if not exc.retryable:
            return str(exc)
        if failing_for >= self.policy.retry_for_s:
            return f"{exc} (still failing after {failing_for:.0f} s of retries)"
        if self.superseded():
            return f"{exc} (superseded by a newer desired state)"
        return None

    def _wait_to_retry(self, journal: Journal, reason: str, retries: int) -> Journal:
        """Sleep a jittered, growing backoff with the wait reported; raise Stopped on stop."""
        p = self.policy
        delay = random.uniform(0.5, 1.0) * min(p.backoff_max_s, p.backoff_s * 2**retries)
        log.info(
            "update to %s %s: %s; retrying in %.0f s",
            journal.ref.name,
            journal.ref.version,
            reason,
            delay,
        )
        waiting = self._save(
            journal.model_copy(
                update={
                    "error": f"retrying in {delay:.0f} s: {reason}"[:2000],
                    "updated_at": self.clock(),
                }
            )
        )
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            if self.stop_event.wait(min(left, 0.5)):
                raise Stopped("stopping while waiting to retry")
            if self.superseded():
                break
        return waiting.model_copy(update={"error": None})

    def _fail(self, journal: Journal, reason: str) -> Journal:
        if machine.failure_phase(journal) == "rolled_back":
            try:
                self._revert(journal)
            except EdgefleetError as exc:
                reason += f"; reverting also failed: {exc}"
        log.warning("update to %s %s failed: %s", journal.ref.name, journal.ref.version, reason)
        final = self._save(machine.fail(journal, reason, self.clock()))
        self._cleanup(final)
        return final

    def _cleanup(self, journal: Journal) -> None:
        self._candidate = None
        self._previous_model = None
        if journal.sha256 and journal.phase != "failed":
            self.artifacts.partial(journal.sha256).unlink(missing_ok=True)

    # ------------------------------------------------------------ phases --

    def _check(self, journal: Journal) -> Journal:
        target = self.trust.lookup(journal.ref.target)
        machine.check_target(
            journal.ref, target.custom, hardware=self.hardware, runtimes=available_runtimes()
        )
        self.artifacts.drop_partials(keep=target.sha256)
        if self._installed(journal.ref, target):
            return machine.already_installed(
                journal, self.clock(), sha256=target.sha256, length=target.length
            )
        return machine.advance(
            journal,
            "downloading",
            self.clock(),
            sha256=target.sha256,
            length=target.length,
            progress=0.0,
        )

    def stage_shadow(self, ref: TargetRef) -> Model:
        """Fetch ``ref`` for a shadow run: looked up in TUF, checked against this device,
        downloaded and hash-verified exactly as an install is, then loaded and self-tested,
        but kept outside the A/B slots and never switched to (the rollback slot survives)."""
        if ref.kind != "model":
            raise UpdateError(f"only a model can run in the shadow, not {ref.kind} {ref.name}")
        target = self.trust.lookup(ref.target)
        machine.check_target(
            ref, target.custom, hardware=self.hardware, runtimes=available_runtimes()
        )
        self.artifacts.fetch_full(
            target,
            lambda n: None,
            attempts=self.policy.download_attempts,
            retry_s=self.policy.retry_s,
        )
        self.artifacts.verify(target)
        shadow = self.work / "shadow"
        shadow.mkdir(parents=True, exist_ok=True)
        for stale in shadow.iterdir():
            stale.unlink(missing_ok=True)
        package = shadow / posixpath.basename(ref.target)
        self.artifacts.partial(target.sha256).replace(package)
        return self.host.load(package)

    def _installed(self, ref: TargetRef, target: SignedTarget) -> bool:
        """Whether this exact signed artifact is already the committed one."""
        if ref.kind == "model":
            pointer = self.slots.pointer()
            active = self.slots.active()
            return bool(pointer and pointer.committed and active and active.sha256 == target.sha256)
        kept = self.artifacts.delta_base("firmware")
        return kept is not None and kept[1] == target.sha256

    def _target(self, journal: Journal) -> SignedTarget:
        """The signed facts kept in the journal (they came from TUF in ``pending``)."""
        if journal.sha256 is None or journal.length is None:
            raise UpdateError("the journal lost the signed hash; starting over")
        directory, basename = posixpath.split(journal.ref.target)
        url = f"{self.trust.targets_url}{posixpath.join(directory, journal.sha256)}.{basename}"
        return SignedTarget(journal.ref.target, journal.length, journal.sha256, url, {})

    def _download(self, journal: Journal) -> Journal:
        target = self._target(journal)
        partial = self.artifacts.partial(target.sha256)
        delta = journal.delta
        base = None
        if journal.ref.kind == "model" and not partial.exists():
            self.artifacts.reuse_local(target)
        if delta == "none" and not partial.exists():
            base = self.artifacts.delta_base(journal.ref.kind)
        if base is not None:
            from .delta import try_delta  # bsdiff4 and httpx: only when there is a base

            result = try_delta(self.client, self.server_url, base[0], base[1], target, partial)
            delta = result.outcome
            if result.reason:
                log.info("delta update %s: %s", delta, result.reason)
            sent = journal.bytes_transferred + result.transferred
            journal = self._save(
                journal.model_copy(update={"delta": delta, "bytes_transferred": sent})
            )
        if delta != "used" or not partial.exists():
            fetched = self.artifacts.fetch_full(
                target,
                lambda n: self._progress(journal, n, target.length),
                attempts=self.policy.download_attempts,
                retry_s=self.policy.retry_s,
            )
            sent = journal.bytes_transferred + fetched
            journal = journal.model_copy(update={"bytes_transferred": sent})
        return machine.advance(journal, "verifying", self.clock(), progress=1.0)

    def _progress(self, journal: Journal, have: int, length: int) -> None:
        now = time.monotonic()
        if now - self._last_progress < 1.0 or have >= length:
            return
        self._last_progress = now
        self._save(journal.model_copy(update={"progress": round(have / length, 3)}))

    def _verify(self, journal: Journal) -> Journal:
        self.artifacts.verify(self._target(journal))
        return machine.advance(journal, "staging", self.clock())

    def _stage(self, journal: Journal) -> Journal:
        target = self._target(journal)
        partial = self.artifacts.partial(target.sha256)
        if journal.ref.kind == "model":
            slot = self.slots.stage(partial, posixpath.basename(journal.ref.target), target.sha256)
            return machine.advance(journal, "self_test", self.clock(), slot=slot.name)
        handler = self._handler()
        bundle = read_bundle(partial)
        check_bundle(bundle.manifest, journal.ref, hardware=self.hardware, handler=handler.id)
        handler.install(bundle)
        return machine.advance(journal, "self_test", self.clock(), slot=handler.id)

    def _handler(self) -> InstallHandler:
        if self.firmware is None:
            raise InstallError("this device has no firmware install handler configured")
        return self.firmware

    def _self_test(self, journal: Journal) -> Journal:
        if journal.ref.kind == "firmware":
            self._handler().verify()
            return machine.advance(journal, "switching", self.clock())
        slot = self._staged(journal)
        self._candidate = self.host.load(slot.package)
        return machine.advance(journal, "switching", self.clock())

    def _staged(self, journal: Journal) -> Slot:
        slot = self.slots.slot(journal.slot) if journal.slot in ("a", "b") else None  # type: ignore[arg-type]
        if slot is None or slot.sha256 != journal.sha256:
            raise InstallError(f"slot {journal.slot} does not hold the verified package")
        return slot

    def _switch(self, journal: Journal) -> Journal:
        now = self.clock()
        if journal.ref.kind == "firmware":
            handler = self._handler()
            if journal.previous is None:  # set once: a resumed switch must not overwrite it
                previous = handler.current_version()
                journal = self._save(journal.model_copy(update={"previous": previous}))
            handler.try_boot()
            handler.reboot()
            return machine.advance(
                journal, "probation", now, probation_until=now + journal.probation_s
            )
        slot = self._staged(journal)
        pointer = self.slots.pointer()
        if journal.previous is None and pointer is not None and pointer.active != slot.name:
            journal = self._save(journal.model_copy(update={"previous": pointer.active}))
        if self._candidate is None:
            serving = self.host.model
            if serving is not None and serving.ref.sha256 == journal.sha256:
                self._candidate = serving  # boot already completed the switch
            else:
                self._candidate = self.host.load(slot.package)
        self.slots.switch(slot.name)
        replaced = self.host.activate(self._candidate)
        if replaced is not None and replaced.ref.sha256 != journal.sha256:
            self._previous_model = replaced
        return machine.advance(journal, "probation", now, probation_until=now + journal.probation_s)

    def _probation(self, journal: Journal) -> Journal:
        if journal.ref.kind == "firmware":
            running = self._handler().current_version()
            if running != journal.ref.version:
                raise InstallError(
                    f"the device booted firmware {running}, not {journal.ref.version}: the "
                    "bootloader fell back to the previous slot"
                )
        elif self._candidate is None:
            # Restarted during probation: boot already serves the new slot (or we do now).
            serving = self.host.model
            if serving is not None and serving.ref.sha256 == journal.sha256:
                self._candidate = serving
            else:
                self._candidate = self.host.load(self._staged(journal).package)
                self.host.activate(self._candidate)
        start = self.health()
        deadline = journal.probation_until or self.clock()
        while True:
            reason = machine.judge_health(
                start,
                self.health(),
                max_error_rate=self.policy.max_error_rate,
                min_inferences=self.policy.min_inferences,
            )
            if reason is not None:
                raise InstallError(reason)
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            if self.stop_event.wait(min(self.policy.poll_s, remaining)):
                raise Stopped("stopping during probation")
        if journal.ref.kind == "firmware":
            self._handler().commit()
            self.artifacts.keep_firmware_base(journal.sha256 or "")
        else:
            self.slots.commit()
        return machine.advance(journal, "committed", self.clock())

    def _revert(self, journal: Journal) -> None:
        if journal.ref.kind == "firmware":
            self._handler().rollback()
            return
        to = journal.previous if journal.previous in ("a", "b") else None
        slot = self.slots.revert(to)  # type: ignore[arg-type]
        if self._previous_model is not None:
            self.host.activate(self._previous_model)
        elif slot is not None:
            self.host.activate(self.host.load(slot.package))
        else:
            raise InstallError("there is no previous model to go back to")
