"""The device twin: desired vs reported state (pure functions)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Literal, Protocol

from edgefleet_contract.messages import Command, DesiredState, ReportedState, TargetRef

from .store.base import CommandRecord, Device


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


def target_ref(
    kind: Literal["model", "firmware"], name: str, version: str, target: str | None = None
) -> TargetRef:
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
