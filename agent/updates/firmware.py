"""Firmware install handlers: the device-specific half of a firmware update.

The updater verifies a bundle (TUF hash, bundle manifest, hardware id) and then
drives a handler through the same try-boot protocol real A/B bootloaders use
(U-Boot's ``upgrade_available`` / ``bootcount`` / ``bootlimit``, RAUC, Mender):

    install(bundle)  write the image to the inactive slot
    verify()         read back what was written
    try_boot()       arm the bootloader to boot the new slot *once*
    reboot()         restart into it (real boards: the process ends here)
    boot_check()     at every agent start: what the bootloader would do on power-up
    commit()         the new slot proved healthy: make it the default
    rollback()       go back to the slot that booted before
    current_version()

:class:`ABSlotHandler` is the reference: directory slots and a bootloader-env
JSON, with the "reboot" simulated by running the boot check.  :class:`CommandHandler`
is the hook for real boards: it runs configured commands (``rauc install``,
``swupdate -i``, ``mender install`` …) — see :data:`PRESETS`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from edgefleet_contract.errors import InstallError
from edgefleet_contract.firmware import FirmwareBundle, FirmwareManifest
from edgefleet_contract.messages import TargetRef

from .journal import write_atomic
from .slots import SlotName, other

log = logging.getLogger(__name__)


def check_bundle(
    manifest: FirmwareManifest, ref: TargetRef, *, hardware: str, handler: str
) -> None:
    """The bundle's own manifest must agree with the signed target and with this board."""
    if manifest.version != ref.version or manifest.name != ref.name:
        raise InstallError(
            f"the bundle holds {manifest.name} {manifest.version}, not {ref.name} {ref.version}"
        )
    if hardware not in manifest.hardware:
        raise InstallError(f"the bundle does not list this device's hardware {hardware!r}")
    if manifest.handler != handler:
        raise InstallError(
            f"the bundle needs install handler {manifest.handler!r}; this device has {handler!r}"
        )


class InstallHandler(ABC):
    """What a firmware update needs from the board; one instance per daemon."""

    id: str

    @abstractmethod
    def install(self, bundle: FirmwareBundle) -> None: ...

    def verify(self) -> None:  # noqa: B027 (optional step)
        """Read back the staged image; the default trusts the install command's exit code."""

    @abstractmethod
    def try_boot(self) -> None: ...

    @abstractmethod
    def reboot(self) -> None: ...

    def boot_check(self) -> None:  # noqa: B027 (optional step)
        """Runs once at agent start; real bootloaders already did their part."""

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def rollback(self) -> None: ...

    @abstractmethod
    def current_version(self) -> str: ...

    def current_slot(self) -> str | None:
        return None


# ------------------------------------------------------------ reference --


class BootEnv(BaseModel):
    """The bootloader environment (what ``fw_printenv`` shows on a U-Boot board)."""

    model_config = ConfigDict(extra="forbid")

    boot_slot: SlotName = "a"
    """The committed slot: what the bootloader boots when no upgrade is pending."""
    booted: SlotName = "a"
    """The slot the last boot came up in."""
    upgrade_available: bool = False
    try_slot: SlotName | None = None
    bootcount: int = 0
    bootlimit: int = 3


class ABSlotHandler(InstallHandler):
    """Directory slots ``{root}/a|b`` (image + version) and ``{root}/bootenv.json``."""

    id = "ab-slot"

    def __init__(self, root: Path, *, initial_version: str = "0.0.0", bootlimit: int = 3) -> None:
        self.root = root
        self.env_file = root / "bootenv.json"
        if not self.env_file.exists():
            root.mkdir(parents=True, exist_ok=True)
            self._write_slot("a", b"", initial_version)
            self._save(BootEnv(bootlimit=bootlimit))

    def env(self) -> BootEnv:
        try:
            return BootEnv.model_validate(json.loads(self.env_file.read_bytes()))
        except (OSError, ValueError, ValidationError) as exc:
            raise InstallError(
                f"the bootloader environment {self.env_file} is unreadable: {exc}"
            ) from exc

    def _save(self, env: BootEnv) -> None:
        write_atomic(self.env_file, env.model_dump_json().encode())

    def _write_slot(self, slot: SlotName, image: bytes, version: str) -> None:
        directory = self.root / slot
        directory.mkdir(parents=True, exist_ok=True)
        record = {"version": version, "sha256": hashlib.sha256(image).hexdigest()}
        write_atomic(directory / "slot.json", b"{}")  # invalidate first: a torn install shows
        write_atomic(directory / "image.bin", image)
        write_atomic(directory / "slot.json", json.dumps(record).encode())

    def _record(self, slot: SlotName) -> dict[str, str]:
        try:
            doc = json.loads((self.root / slot / "slot.json").read_bytes())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def install(self, bundle: FirmwareBundle) -> None:
        env = self.env()
        target = other(env.booted)
        self._write_slot(target, bundle.image, bundle.manifest.version)

    def verify(self) -> None:
        target = other(self.env().booted)
        record = self._record(target)
        try:
            image = (self.root / target / "image.bin").read_bytes()
        except OSError as exc:
            raise InstallError(f"cannot read back firmware slot {target}: {exc}") from exc
        if hashlib.sha256(image).hexdigest() != record.get("sha256"):
            raise InstallError(f"firmware slot {target} does not hold the image just written")

    def try_boot(self) -> None:
        env = self.env()
        target = other(env.booted)
        armed = {"upgrade_available": True, "try_slot": target, "bootcount": 0}
        self._save(env.model_copy(update=armed))

    def reboot(self) -> None:
        self.boot_check()

    def boot_check(self) -> None:
        """The bootloader: try the new slot at most ``bootlimit`` times, then fall back."""
        env = self.env()
        if env.upgrade_available and env.try_slot is not None:
            count = env.bootcount + 1
            if count > env.bootlimit:
                log.warning("firmware slot %s failed %d boots", env.try_slot, env.bootlimit)
                env = env.model_copy(
                    update={"upgrade_available": False, "try_slot": None, "booted": env.boot_slot}
                )
            else:
                env = env.model_copy(update={"bootcount": count, "booted": env.try_slot})
        else:
            env = env.model_copy(update={"booted": env.boot_slot})
        self._save(env)

    def commit(self) -> None:
        env = self.env()
        self._save(
            env.model_copy(
                update={
                    "boot_slot": env.booted,
                    "upgrade_available": False,
                    "try_slot": None,
                    "bootcount": 0,
                }
            )
        )

    def rollback(self) -> None:
        env = self.env()
        self._save(
            env.model_copy(
                update={
                    "upgrade_available": False,
                    "try_slot": None,
                    "bootcount": 0,
                    "booted": env.boot_slot,
                }
            )
        )

    def current_version(self) -> str:
        return str(self._record(self.env().booted).get("version", "unknown"))

    def current_slot(self) -> str | None:
        return self.env().booted


# ------------------------------------------------------------ real boards --

PRESETS: Mapping[str, Mapping[str, Sequence[str]]] = {
    "rauc": {
        "install": ("rauc", "install", "{image}"),
        "commit": ("rauc", "status", "mark-good"),
        "rollback": ("rauc", "status", "mark-bad"),
        "reboot": ("systemctl", "reboot"),
    },
    "swupdate": {
        "install": ("swupdate", "-i", "{image}"),
        "commit": ("fw_setenv", "upgrade_available", "0"),
        "rollback": ("fw_setenv", "upgrade_available", "0"),
        "reboot": ("systemctl", "reboot"),
    },
    "mender": {
        "install": ("mender", "install", "{image}"),
        "commit": ("mender", "commit"),
        "rollback": ("mender", "rollback"),
        "reboot": ("systemctl", "reboot"),
    },
}
"""Command lines for the update clients of real boards.  ``{image}`` is the image path.

RAUC, SWUpdate and Mender each arm their bootloader's try-boot themselves on
install, so ``try_boot`` is empty for them; ``version`` defaults to reading
the version file the handler writes on commit (set it to e.g.
``("cat", "/etc/sw-version")`` to ask the system instead).
"""


class CommandHandler(InstallHandler):
    """Runs configured commands (argv lists, no shell) for each step; any failure is an error.

    The image is unpacked to ``{root}/incoming/`` first, because update clients
    take a file path.  Commands run with a timeout and their output tail lands in
    the error the server sees.
    """

    def __init__(
        self,
        handler_id: str,
        root: Path,
        commands: Mapping[str, Sequence[str]],
        *,
        initial_version: str = "0.0.0",
        timeout_s: float = 1800.0,
    ) -> None:
        unknown = set(commands) - {"install", "try_boot", "reboot", "commit", "rollback", "version"}
        if unknown or "install" not in commands:
            raise InstallError(
                f"install handler {handler_id}: needs an 'install' command; unknown steps "
                f"{sorted(unknown)}"
            )
        self.id = handler_id
        self.root = root
        self.commands = {step: tuple(argv) for step, argv in commands.items()}
        self.timeout_s = timeout_s
        self.version_file = root / "version"
        self.pending_file = root / "pending-version"
        if not self.version_file.exists():
            root.mkdir(parents=True, exist_ok=True)
            write_atomic(self.version_file, initial_version.encode())

    @classmethod
    def preset(cls, name: str, root: Path, **overrides: Sequence[str]) -> CommandHandler:
        if name not in PRESETS:
            raise InstallError(f"unknown install handler {name!r} (known: {', '.join(PRESETS)})")
        return cls(name, root, {**PRESETS[name], **overrides})

    def _run(self, step: str, **values: str) -> str:
        argv = self.commands.get(step)
        if not argv:
            return ""
        args = [part.format(**values) for part in argv]
        try:
            done = subprocess.run(
                args, capture_output=True, text=True, timeout=self.timeout_s, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallError(f"{self.id} {step}: cannot run {args[0]}: {exc}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-500:]
            raise InstallError(f"{self.id} {step} failed (exit {done.returncode}): {tail}")
        return done.stdout

    def install(self, bundle: FirmwareBundle) -> None:
        incoming = self.root / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        image = incoming / bundle.manifest.image.file
        write_atomic(image, bundle.image)
        try:
            self._run("install", image=str(image))
        finally:
            image.unlink(missing_ok=True)
        write_atomic(self.pending_file, bundle.manifest.version.encode())

    def try_boot(self) -> None:
        self._run("try_boot")

    def reboot(self) -> None:
        self._run("reboot")

    def commit(self) -> None:
        self._run("commit")
        if self.pending_file.exists():
            os.replace(self.pending_file, self.version_file)

    def rollback(self) -> None:
        self._run("rollback")
        self.pending_file.unlink(missing_ok=True)

    def current_version(self) -> str:
        if "version" in self.commands:
            return self._run("version").strip()[:128] or "unknown"
        if self.pending_file.exists():
            return self.pending_file.read_text().strip()
        return self.version_file.read_text().strip()
