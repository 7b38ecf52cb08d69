"""The device twin: desired vs reported state, and the one path desired state takes.

:class:`Twin` is that path: the API (an operator's ``twin set``), the rollout
driver and the reconciler all go through it, so "store the desired state under
the next version, record the ``set_desired`` command, send it" is written once.
The rest are pure functions over the two halves.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, TypedDict

from pydantic import ValidationError

from edgefleet_contract.errors import EdgefleetError, LinkError
from edgefleet_contract.messages import (
    ArtifactKind,
    Command,
    DesiredState,
    ReportedState,
    TargetRef,
)

from .store.base import CommandRecord, Device, Store

log = logging.getLogger(__name__)


class CommandSender(Protocol):
    """Delivers a command to a device (the server link implements it over MQTT)."""

    def send_command(self, device_id: str, command: Command) -> None: ...


TwinStatus = Literal["no_desired", "pending", "in_sync", "drifted"]


def twin_status(desired: DesiredState | None, reported: ReportedState | None) -> TwinStatus:
    """``no_desired``: nothing was ever asked of the device;
    ``pending``: the device has not applied the newest desired version yet;
    ``drifted``: it applied it but runs something else (rolled back, changed locally);
    ``in_sync``: it runs what it should."""
    if desired is None:
        return "no_desired"
    if reported is None or reported.desired_version < desired.version:
        return "pending"
    if desired.model is not None and (
        reported.model is None
        or (reported.model.name, reported.model.version)
        != (desired.model.name, desired.model.version)
    ):
        return "drifted"
    if desired.firmware is not None and (
        reported.firmware is None or reported.firmware.version != desired.firmware.version
    ):
        return "drifted"
    return "in_sync"


def twin_refusal(device: Device, commands: Sequence[CommandRecord]) -> str | None:
    """Why ``device`` refused its newest desired state, from what it said, or None.

    Two places hold the answer: the ``set_desired`` command's acknowledgement (a
    setting it refused) and the reported update (an artifact that failed to install
    or was rolled back).  Either is for the newest desired version only.
    """
    desired = device.desired
    if desired is None:
        return None
    for command in commands:  # newest first
        if command.name != "set_desired" or command.args.get("version") != desired.version:
            continue
        if command.status in ("rejected", "failed"):
            return f"{command.status}: {command.detail}"
        break
    update = device.reported.update if device.reported else None
    if (
        update is not None
        and update.desired_version == desired.version
        and update.phase in ("failed", "rolled_back")
    ):
        return f"update {update.phase}: {update.error or 'no reason given'}"
    return None


def target_ref(kind: ArtifactKind, name: str, version: str, target: str | None = None) -> TargetRef:
    """A desired artifact; its TUF target path defaults to ``{kind}s/{name}/{version}``."""
    return TargetRef(
        kind=kind, name=name, version=version, target=target or f"{kind}s/{name}/{version}"
    )


def desired_command(desired: DesiredState, *, now: float, ttl_s: float = 86400) -> Command:
    return Command(
        id="c-" + secrets.token_hex(8),
        name="set_desired",
        args=desired.model_dump(mode="json", exclude_none=True),
        ts=now,
        expires_at=now + ttl_s,
    )


def needs_resend(device: Device) -> bool:
    """Whether an online device is behind its desired state."""
    if device.desired is None or not device.online:
        return False
    applied = device.reported.desired_version if device.reported else 0
    return applied < device.desired.version


class DesiredFields(TypedDict, total=False):
    """What a desired state asks for; its version is the twin's to give."""

    model: TargetRef | None
    firmware: TargetRef | None
    config: dict[str, Any]
    shadow: TargetRef | None


class Twin:
    """Desired state into the store and out to the device, the same way for every caller.

    A new desired state is stored under the device's next version and its
    command is recorded before it is sent, so the device's acknowledgement
    always finds the record.  A link that is away (``sender`` None, or a
    ``LinkError``) leaves the state stored: the reconciler sends it when the
    device is back (:meth:`resend`).
    """

    def __init__(
        self,
        store: Store,
        sender: CommandSender | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.sender = sender
        self.clock = clock

    def set_desired(
        self,
        device_id: str,
        fields: DesiredFields,
        *,
        actor: str,
        rollout_id: str | None = None,
        now: float | None = None,
    ) -> DesiredState:
        """Store ``fields`` as the device's newest desired state, record it, send it.

        An invalid state (a bad config value, say) raises ``EdgefleetError`` naming
        the field, before anything is stored.
        """
        try:
            desired = DesiredState(
                version=self.store.next_desired_version(device_id),
                rollout_id=rollout_id,
                **fields,
            )
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise EdgefleetError(f"invalid desired state: {where}: {first.get('msg')}") from None
        self.store.set_desired(device_id, desired)
        now = self.clock() if now is None else now
        command = desired_command(desired, now=now)
        self.store.add_command(CommandRecord.sent(device_id, command, actor))
        if self.sender is not None:
            try:
                self.sender.send_command(device_id, command)
            except LinkError as exc:
                log.warning("desired state of %s stored, not sent yet: %s", device_id, exc)
        return desired

    def resend(self, device_id: str, desired: DesiredState, *, actor: str) -> bool:
        """Tell the device its stored desired state again; whether it went out.

        Nothing is stored anew (the version stays, so the device sees the same
        state), and a resend the link refused is not recorded: it is no part of
        the device's history, and the next report tries again.
        """
        if self.sender is None:
            return False
        command = desired_command(desired, now=self.clock())
        try:
            self.sender.send_command(device_id, command)
        except EdgefleetError as exc:
            log.warning("could not re-send desired state to %s: %s", device_id, exc)
            return False
        self.store.add_command(CommandRecord.sent(device_id, command, actor))
        return True
