"""Between the engine and the store: a rollout in, a rollout out, the same either way."""

from __future__ import annotations

from collections.abc import Sequence

from edgefleet_contract.errors import StoreError

from ..store.base import RolloutEvent, RolloutRow, Store
from .engine import Rollout
from .model import DeviceProgress, Note, RolloutState
from .plan import RolloutPlan


def row_of(rollout: Rollout) -> RolloutRow:
    s = rollout.state
    return RolloutRow(
        id=s.id,
        status=s.status,
        artifact=rollout.plan.artifact.label,
        created_at=s.created_at,
        created_by=s.created_by,
        updated_at=s.updated_at,
        plan=rollout.plan.to_json(),
        state=s.to_json(),
    )


def save(
    store: Store,
    rollout: Rollout,
    notes: Sequence[Note] = (),
    *,
    create: bool = False,
    expect_updated_at: float | None = None,
) -> None:
    """Write the rollout, the devices that changed since the last save, and ``notes``
    (over the stored version of ``expect_updated_at`` only, when given)."""
    changed = [rollout.devices[d].to_json() for d in sorted(rollout.dirty)]
    events = [RolloutEvent(n.ts, n.kind, n.message, n.device_id) for n in notes]
    store.save_rollout(
        row_of(rollout),
        devices=changed,
        events=events,
        create=create,
        expect_updated_at=expect_updated_at,
    )
    rollout.dirty.clear()


def load(store: Store, rollout_id: str) -> Rollout:
    row = store.get_rollout(rollout_id)
    try:
        devices = [DeviceProgress.from_json(d) for d in store.rollout_devices(rollout_id)]
        return Rollout(RolloutPlan.from_json(row.plan), RolloutState.from_json(row.state), devices)
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(
            f"rollout {rollout_id} is stored in a form this server cannot read ({exc!r})"
        ) from None
