"""The downloads directory: partial artifacts, the kept firmware base, and their checks.

    {data_dir}/updates/{sha256}.part                 an artifact on its way in (resumable)
    {data_dir}/updates/firmware-base/{sha256}.efbundle  the last committed firmware bundle

Files are named by the hash TUF signed, so a partial file can only ever be
completed into the artifact it was started for, and a resumed update finds
its bytes again after a restart.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet_contract.errors import DownloadFailed, TrustError, UpdateError

from .slots import SLOTS, ModelSlots
from .targets import SignedTarget, Stopped

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)


class Artifacts:
    def __init__(
        self,
        work: Path,
        client: Callable[[], httpx.Client],
        slots: ModelSlots,
        stop_event: threading.Event,
    ) -> None:
        self.work = work
        self.client = client
        self.slots = slots
        self.stop_event = stop_event

    def partial(self, sha256: str) -> Path:
        return self.work / f"{sha256}.part"

    def drop_partials(self, keep: str) -> None:
        """Forget downloads of other artifacts: only the current target may resume."""
        for stale in self.work.glob("*.part"):
            if stale.name != f"{keep}.part":
                stale.unlink(missing_ok=True)

    @property
    def firmware_base_dir(self) -> Path:
        return self.work / "firmware-base"

    def delta_base(self, kind: str) -> tuple[Path, str] | None:
        """The artifact this device already has of ``kind`` (and its hash), if any."""
        if kind == "model":
            active = self.slots.active(verify=True)
            return (active.package, active.sha256) if active is not None else None
        for kept in self.firmware_base_dir.glob("*.efbundle"):
            return kept, kept.name.removesuffix(".efbundle")
        return None

    def reuse_local(self, target: SignedTarget) -> bool:
        """Copy the artifact from a model slot that already holds it (a rollback to the
        previous version costs no download); the copy is verified like any other."""
        for name in SLOTS:
            slot = self.slots.slot(name)
            if slot is not None and slot.sha256 == target.sha256:
                partial = self.partial(target.sha256)
                partial.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(slot.package, partial)
                return True
        return False

    def keep_firmware_base(self, sha256: str) -> None:
        """Keep the committed bundle as the base the next firmware delta applies to."""
        partial = self.partial(sha256)
        if not partial.exists():
            return
        directory = self.firmware_base_dir
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.efbundle"):
            old.unlink()
        partial.replace(directory / f"{sha256}.efbundle")

    def fetch_full(
        self,
        target: SignedTarget,
        progress: Callable[[int], None],
        *,
        attempts: int = 3,
        retry_s: float = 2.0,
    ) -> int:
        """Download with Range resume, retrying a broken connection from where it stopped.

        Returns the bytes received over the network (also counted when it fails).
        """
        from .fetch import download_resumable  # httpx and python-tuf: only when downloading

        partial = self.partial(target.sha256)
        fetched = 0
        for attempt in range(attempts):
            before = partial.stat().st_size if partial.exists() else 0
            try:
                return fetched + download_resumable(
                    self.client(), target.url, partial, target.length, progress=progress
                )
            except DownloadFailed as exc:
                after = partial.stat().st_size if partial.exists() else 0
                fetched += max(0, after - before)
                if not exc.retryable or attempt + 1 >= attempts:
                    raise
                log.info("download interrupted (%s); resuming", exc)
                if self.stop_event.wait(retry_s * (attempt + 1)):
                    raise Stopped("stopping mid-download") from exc
        return fetched

    def verify(self, target: SignedTarget) -> None:
        """Length and SHA-256 of the downloaded file against the signed target, or refuse it."""
        partial = self.partial(target.sha256)
        digest = hashlib.sha256()
        size = 0
        try:
            with partial.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
                    size += len(block)
        except OSError as exc:
            raise UpdateError(f"the downloaded file is gone: {exc}") from exc
        if size != target.length or digest.hexdigest() != target.sha256:
            partial.unlink(missing_ok=True)
            raise TrustError(
                f"{target.path}: the downloaded artifact ({size} bytes, sha256 "
                f"{digest.hexdigest()[:12]}…) does not match the signed length {target.length} "
                f"and sha256 {target.sha256[:12]}…; refusing a tampered or corrupted artifact"
            )
