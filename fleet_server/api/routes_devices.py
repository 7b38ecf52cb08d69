"""Devices: registry, enrollment tokens, revocation, twin and commands."""

from __future__ import annotations

import difflib
import logging
import secrets
import shlex

from fastapi import APIRouter, Depends, Query

from edgefleet_contract.desired_config import check_config
from edgefleet_contract.errors import ContractError, LinkError
from edgefleet_contract.messages import ArtifactKind, Command, TargetRef

from ..auth import Principal
from ..selector import parse as parse_selector
from ..store.base import CommandRecord, Device
from ..twin import DesiredFields, target_ref, twin_refusal, twin_status
from ..versions import version_key
from .context import ApiContext
from .deps import ctx, require
from .schemas import (
    MAX_OFFSET,
    ArtifactIn,
    CommandIn,
    CommandOut,
    DesiredIn,
    DeviceCreate,
    DeviceOut,
    DevicePage,
    DevicePatch,
    EnrollmentTokenOut,
    Items,
    TwinOut,
    items,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/devices", tags=["devices"])
_NO_BROKER = "this server has no MQTT broker session, so it cannot reach devices"


def _token_out(c: ApiContext, device_id: str, token: str, expires_at: float) -> EnrollmentTokenOut:
    command = " ".join(
        ["edge-agent", "enroll", "--server", shlex.quote(c.settings.api_url), "--token", token]
    )
    return EnrollmentTokenOut(
        device_id=device_id, token=token, expires_at=expires_at, enroll_command=command
    )


@router.get("", response_model=DevicePage)
def list_devices(
    selector: str | None = Query(
        None, max_length=2000, description="e.g. tag:site=berlin and online"
    ),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    limit: int = Query(100, ge=1, le=1000),
    who: Principal = Depends(require("viewer")),
    c: ApiContext = Depends(ctx),
) -> DevicePage:
    where = parse_selector(selector) if selector else None
    page = c.store.list_devices(where=where, offset=offset, limit=limit)
    return DevicePage(
        items=[DeviceOut.of(d) for d in page.items], total=page.total, offset=offset, limit=limit
    )


@router.post("", response_model=EnrollmentTokenOut, status_code=201)
def create_device(
    body: DeviceCreate, who: Principal = Depends(require("operator")), c: ApiContext = Depends(ctx)
) -> EnrollmentTokenOut:
    issued = c.enrollment.add_device(body.id, name=body.name or body.id, tags=body.tags)
    return _token_out(c, body.id, issued.token, issued.expires_at)


@router.get("/{device_id}", response_model=DeviceOut)
def get_device(
    device_id: str, who: Principal = Depends(require("viewer")), c: ApiContext = Depends(ctx)
) -> DeviceOut:
    return DeviceOut.of(c.store.get_device(device_id))


@router.patch("/{device_id}", response_model=DeviceOut)
def patch_device(
    device_id: str,
    body: DevicePatch,
    who: Principal = Depends(require("operator")),
    c: ApiContext = Depends(ctx),
) -> DeviceOut:
    device = c.store.update_device(device_id, name=body.name, tags=body.tags, groups=body.groups)
    return DeviceOut.of(device)


@router.post("/{device_id}/token", response_model=EnrollmentTokenOut)
def new_token(
    device_id: str, who: Principal = Depends(require("operator")), c: ApiContext = Depends(ctx)
) -> EnrollmentTokenOut:
    issued = c.enrollment.new_token(device_id)
    return _token_out(c, device_id, issued.token, issued.expires_at)


@router.post("/{device_id}/revoke", response_model=DeviceOut)
def revoke(
    device_id: str, who: Principal = Depends(require("operator")), c: ApiContext = Depends(ctx)
) -> DeviceOut:
    c.enrollment.revoke(device_id)
    return DeviceOut.of(c.store.get_device(device_id))


@router.delete("/{device_id}", response_model=DeviceOut)
def decommission(
    device_id: str, who: Principal = Depends(require("operator")), c: ApiContext = Depends(ctx)
) -> DeviceOut:
    """Take a device out of service: revoke it (certificates on the CRL, cut off from the
    broker), keep its history, and free its id for a replacement (``POST /devices``)."""
    device = c.store.get_device(device_id)
    if device.state == "decommissioned":
        return DeviceOut.of(device)
    if device.state != "revoked":
        c.enrollment.revoke(device_id)
    c.store.decommission_device(device_id)
    return DeviceOut.of(c.store.get_device(device_id))


@router.get("/{device_id}/twin", response_model=TwinOut)
def get_twin(
    device_id: str, who: Principal = Depends(require("viewer")), c: ApiContext = Depends(ctx)
) -> TwinOut:
    d = c.store.get_device(device_id)
    return TwinOut(
        device_id=d.id,
        status=twin_status(d.desired, d.reported),
        desired=d.desired,
        reported=d.reported,
        reported_at=d.reported_at,
        refusal=twin_refusal(d, c.store.list_commands(device_id, limit=20)),
    )


@router.put("/{device_id}/twin/desired", response_model=TwinOut)
def set_desired(
    device_id: str,
    body: DesiredIn,
    who: Principal = Depends(require("operator")),
    c: ApiContext = Depends(ctx),
) -> TwinOut:
    """Store the new desired state under the next version, then tell the device.

    The state is stored even when the device or the broker is away: the
    reconciler sends it again when the device comes back online.
    """
    check_config(body.config)
    _check_registered(c, body)
    fields: DesiredFields = {
        "model": _artifact("model", body.model),
        "firmware": _artifact("firmware", body.firmware),
        "config": body.config,
    }
    c.twin.set_desired(device_id, fields, actor=who.username)
    return get_twin(device_id, who, c)


def _check_registered(c: ApiContext, body: DesiredIn) -> None:
    """A model or firmware named by version alone must be in the registry.

    (One given with its own TUF ``target`` path is the caller's to vouch for.)
    """
    if c.artifacts is None:
        return
    for kind, given in (("model", body.model), ("firmware", body.firmware)):
        if given is None or given.target is not None:
            continue
        items, _ = c.artifacts.search(kind=kind, name=given.name, limit=1000)
        versions = sorted({a.version for a in items}, key=version_key)
        if given.version not in versions:
            have = ", ".join(versions) or "none"
            raise ContractError(
                f"{kind} {given.name}@{given.version} is not registered (registered versions "
                f"of {given.name}: {have}); push it first: fleetctl {kind}s push FILE"
            )


def _artifact(kind: ArtifactKind, given: ArtifactIn | None) -> TargetRef | None:
    if given is None:
        return None
    return target_ref(kind, given.name, given.version, given.target)


@router.post("/{device_id}/commands", response_model=CommandOut, status_code=202)
def send_command(
    device_id: str,
    body: CommandIn,
    who: Principal = Depends(require("operator")),
    c: ApiContext = Depends(ctx),
) -> CommandOut:
    _check_declared(c.store.get_device(device_id), body.name)
    if c.commands is None:
        raise LinkError(_NO_BROKER)
    now = c.clock()
    command = Command(
        id="c-" + secrets.token_hex(8),
        name=body.name,
        args=body.args,
        ts=now,
        expires_at=now + body.ttl_s,
    )
    record = _send(c, device_id, command, who)
    return CommandOut(**vars(record))


@router.get("/{device_id}/commands", response_model=Items[CommandOut])
def list_commands(
    device_id: str,
    limit: int = Query(50, ge=1, le=500),
    who: Principal = Depends(require("viewer")),
    c: ApiContext = Depends(ctx),
) -> Items[CommandOut]:
    c.store.get_device(device_id)
    return items([CommandOut(**vars(r)) for r in c.store.list_commands(device_id, limit=limit)])


def _check_declared(device: Device, name: str) -> None:
    """Refuse a command the device has said it does not know (its reported capabilities).

    A device that has not reported yet is given the benefit of the doubt: it answers
    an unknown command with "rejected" itself.
    """
    declared = device.reported.capabilities if device.reported else []
    if not declared or name in declared:
        return
    close = difflib.get_close_matches(name, declared, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    known = ", ".join(c for c in declared if ":" not in c)
    raise ContractError(
        f"{device.id} does not know the command {name!r}{hint} (it declares: {known})"
    )


def _send(c: ApiContext, device_id: str, command: Command, who: Principal) -> CommandRecord:
    """Record, then publish; a device that is away gets it from its persistent session."""
    if c.commands is None:
        raise LinkError(_NO_BROKER)
    record = CommandRecord.sent(device_id, command, who.username)
    c.store.add_command(record)
    c.commands.send_command(device_id, command)
    return record
