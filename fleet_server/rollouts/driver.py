"""The edge around the rollout engines: clock, store, desired state, device reports.

One background thread ticks every live rollout once a second.  Ingest calls
:meth:`RolloutDriver.device_updated` (from its writer thread) after a device's
presence or reported state was stored; the id is queued and the tick thread
feeds the device's new state to the rollouts that hold it, so every engine is
only ever touched under one lock.  Every call that changes an engine ends with
a save (state, changed device rows, events) before the next event is taken:
a server killed at any point restarts from the last complete transition.

Actions become desired state through the twin path operators use
(:meth:`~fleet_server.twin.Twin.set_desired`: stored under the next version,
recorded, then sent; a device that is away gets it from the reconciler when it
returns).
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from edgefleet_common.background import IntervalThread
from edgefleet_contract.errors import EdgefleetError, NotFound, PlanError
from edgefleet_contract.messages import ArtifactKind, DesiredState, TargetRef

from ..cbpe import Calibration
from ..selector import parse as parse_selector
from ..store.base import Device, Store
from ..twin import CommandSender, DesiredFields, Twin
from .artifacts import ArtifactResolver
from .engine import Candidate, Rollout
from .metrics import measure
from .model import (
    ACTIVE,
    Action,
    DeviceProgress,
    Dispatch,
    EvaluateGates,
    Note,
    Revert,
    RolloutState,
    Shadow,
)
from .persist import load, save
from .plan import RolloutPlan

log = logging.getLogger(__name__)

Verb = Callable[[Rollout, float], list[Action]]


class RolloutDriver:
    def __init__(
        self,
        store: Store,
        sender: CommandSender | None,
        *,
        resolver: ArtifactResolver | None = None,
        calibrations: Callable[[str], Calibration | None] | None = None,
        clock: Callable[[], float] = time.time,
        interval_s: float = 1.0,
        shared: bool = False,
    ) -> None:
        self.store = store
        self.twin = Twin(store, sender, clock=clock)
        self.resolver = resolver
        """Resolves what a device reports running, to record it as a rollback target."""
        self.clock = clock
        self.interval_s = interval_s
        self._lock = threading.RLock()
        self._reports: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._live: dict[str, Rollout] = {}
        self._saved: dict[str, str] = {}
        self.errors = 0
        """Ticks that raised (each is logged); the driver keeps going."""
        self._thread = IntervalThread(
            "rollouts",
            self.step,
            interval_s=lambda: self.interval_s,
            log=log,
            failure="rollout tick failed; will retry",
            on_error=self._count_error,
        )
        self.calibrations = calibrations
        """A model version's package calibration (``name@version``), for the gates'
        label-free estimate; None: gates compare labels only."""
        self.shared = shared
        """Several fleet-server processes share the store (``--role`` other than a lone
        ``all``).  Then only the process holding the rollouts lease runs the engines;
        the others' ``create``/``act`` write to the store and keep nothing in memory,
        and the holder re-reads the store every tick (see :meth:`_sync`)."""
        self._hosting = False
        self._stored: dict[str, str] = {}
        self._version: dict[str, float] = {}
        """Each rollout's ``updated_at`` as this process last read or wrote it."""
        self.reload()

    # ---------------------------------------------------------- lifecycle --

    def reload(self) -> None:
        """(Re)build the engines of every live rollout from the store."""
        with self._lock:
            self._live = {}
            for row in self.store.list_rollouts(statuses=sorted(ACTIVE), limit=10_000):
                self._adopt(row.id)
            # Reports that arrived while no driver ran: read every waiting device once.
            self._requeue_waiting()

    def _adopt(self, rollout_id: str) -> bool:
        """Load a stored rollout's engine into the live set; False (counted, logged, the
        rollout left as it is in the store) when it cannot be loaded."""
        try:
            self._live[rollout_id] = self._load(rollout_id)
        except EdgefleetError:
            self.errors += 1
            log.exception("rollout %s cannot be loaded; it is left as it is", rollout_id)
            return False
        return True

    def _requeue_waiting(self) -> None:
        """Queue every device a live rollout still waits on, to be read at the next tick."""
        for rollout in self._live.values():
            for d in rollout.devices.values():
                if d.status not in ("succeeded", "failed", "skipped", "rolled_back"):
                    self._reports.put(d.device_id)

    def start(self) -> None:
        """Run the engines here (in a shared store: this process took the rollouts lease)."""
        with self._lock:
            self._hosting = True
        if self.shared:
            self.reload()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._thread.stop(timeout)
        with self._lock:
            self._hosting = False
            if self.shared:  # another process runs them from now on
                self._live, self._stored = {}, {}

    def _count_error(self) -> None:
        self.errors += 1

    @property
    def live_count(self) -> int:
        return len(self._live)

    def device_updated(self, device_id: str) -> None:
        """Ingest's hook: a device's presence or reported state was stored."""
        self._reports.put(device_id)

    # -------------------------------------------------------------- steps --

    def step(self, now: float | None = None) -> None:
        """Feed queued device reports, then tick every live rollout."""
        now = self.clock() if now is None else now
        if self.shared:
            self._sync()
        seen: set[str] = set()
        while True:
            try:
                seen.add(self._reports.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            for device_id in sorted(seen):
                holders = [r for r in self._live.values() if device_id in r.devices]
                if not holders:
                    continue
                try:
                    device = self.store.get_device(device_id)
                except NotFound:
                    continue
                reporter = functools.partial(_report, device=device, now=now)
                for rollout in holders:
                    self._guarded(rollout, reporter, now)
            for rollout in list(self._live.values()):
                self._guarded(rollout, lambda r: r.tick(now), now)

    def _sync(self) -> None:
        """Shared store: take in what other processes wrote since the last tick.

        Rollouts created elsewhere are adopted, a rollout whose stored state is not
        the one this process saved last (an operator's verb through another API
        replica) is reloaded, and every waiting device is re-read, since its reports
        were stored by an ingest worker whose hook cannot reach this process.
        """
        with self._lock:
            for row in self.store.list_rollouts(statuses=sorted(ACTIVE), limit=10_000):
                live = self._live.get(row.id)
                if live is not None and _state_key(row.state) == self._stored.get(row.id):
                    continue
                if self._adopt(row.id):
                    self._stored[row.id] = _state_key(row.state)
            self._requeue_waiting()

    def _guarded(
        self, rollout: Rollout, event: Callable[[Rollout], list[Action]], now: float
    ) -> None:
        """One event for one rollout; if it fails, the rollout is rebuilt from its last save.

        Actions already carried out before the failure may then be carried out
        again; each is safe to repeat (a desired state is stored and sent anew).
        """
        try:
            self._apply(rollout, event(rollout), now)
        except Exception:
            self.errors += 1
            rid = rollout.state.id
            log.exception("rollout %s: event failed; reloading its last saved state", rid)
            try:
                self._live[rid] = self._load(rid)
            except Exception:
                log.exception("rollout %s cannot be reloaded; dropped until restart", rid)
                self._live.pop(rid, None)

    def create(self, plan: RolloutPlan, *, actor: str, now: float | None = None) -> Rollout:
        now = self.clock() if now is None else now
        selector = parse_selector(plan.selector)
        with self._lock:
            busy = self._busy_devices()
            enrolled = self.store.all_devices(where=selector & parse_selector("state:enrolled"))
            candidates = [
                Candidate(d.id, d.online, _running(d, plan)) for d in enrolled if d.id not in busy
            ]
            if not candidates:
                taken = f" ({len(enrolled)} are in another live rollout)" if enrolled else ""
                raise PlanError(f"the target {plan.selector!r} matches no free device{taken}")
            rollout_id = "r-" + secrets.token_hex(6)
            rollout = Rollout.create(rollout_id, plan, candidates, now=now, actor=actor)
            note = Note(now, "created", f"{len(candidates)} devices, by {actor}")
            save(self.store, rollout, [note], create=True)
            self._version[rollout_id] = rollout.state.updated_at
            self._live[rollout_id] = rollout
            self._apply(rollout, rollout.tick(now), now)
            self._forget_unless_hosting(rollout_id)
            return _snapshot(rollout)

    def act(self, rollout_id: str, verb: str, *, actor: str, now: float | None = None) -> Rollout:
        """An operator's ``pause``/``resume``/``abort``/``rollback``."""
        now = self.clock() if now is None else now
        verbs: dict[str, Verb] = {
            "pause": lambda r, t: r.pause(t),
            "resume": lambda r, t: r.resume(t),
            "abort": lambda r, t: r.abort(t),
            "rollback": lambda r, t: r.rollback(t, f"rolled back by {actor}"),
        }
        with self._lock:
            rollout = self.get_live(rollout_id)
            actions = verbs[verb](rollout, now)  # a RolloutError here changed nothing
            self._live[rollout_id] = rollout
            try:
                self._apply(rollout, actions, now)
            except Exception:
                self.errors += 1
                self._live[rollout_id] = self._load(rollout_id)
                raise
            finally:
                self._forget_unless_hosting(rollout_id)
            return _snapshot(rollout)

    def get_live(self, rollout_id: str) -> Rollout:
        """The engine to act on: this process's own, or (not hosting) the stored one."""
        live = self._live.get(rollout_id) if self._hosting or not self.shared else None
        return live or self._load(rollout_id)

    def _load(self, rollout_id: str) -> Rollout:
        """The rollout as stored, remembering which version that was (for the next save)."""
        rollout = load(self.store, rollout_id)
        self._version[rollout_id] = rollout.state.updated_at
        return rollout

    def _forget_unless_hosting(self, rollout_id: str) -> None:
        """A process that does not run the engines keeps no copy (it would go stale)."""
        if self.shared and not self._hosting:
            self._live.pop(rollout_id, None)
            self._saved.pop(rollout_id, None)

    def get(self, rollout_id: str) -> Rollout:
        """A copy of the rollout as it is now (safe to read while the driver goes on)."""
        with self._lock:
            live = self._live.get(rollout_id) if self._hosting or not self.shared else None
            if live is not None:
                return _snapshot(live)
        return load(self.store, rollout_id)

    def _busy_devices(self) -> set[str]:
        """Devices some live rollout holds (in a shared store: as stored, by any process)."""
        if not self.shared:
            return {d for r in self._live.values() for d in r.devices}
        rows = self.store.list_rollouts(statuses=sorted(ACTIVE), limit=10_000)
        return {d["device_id"] for row in rows for d in self.store.rollout_devices(row.id)}

    # ------------------------------------------------------------ actions --

    def _apply(self, rollout: Rollout, actions: list[Action], now: float) -> None:
        notes: list[Note] = []
        pending = list(actions)
        while pending:
            action = pending.pop(0)
            if isinstance(action, Note):
                notes.append(action)
            elif isinstance(action, Dispatch):
                pending += self._dispatch(rollout, action.device_id, now)
            elif isinstance(action, Revert):
                pending += self._revert(rollout, action, now)
            elif isinstance(action, Shadow):
                self._shadow(rollout, action, now)
            elif isinstance(action, EvaluateGates):
                values, samples = measure(
                    self.store,
                    action.device_ids,
                    rollout.plan.artifact,
                    since=action.since,
                    until=action.until,
                    baseline_until=rollout.state.created_at,
                    parent=rollout.state.parent if rollout.plan.vs_parent else None,
                    cohort=sorted(rollout.devices, key=lambda d: rollout.devices[d].order),
                    calibrations=self.calibrations,
                )
                pending += rollout.gates_measured(action.wave, values, now, samples)
        # Save after every transition; a tick that changed nothing (a halted rollout
        # waiting for its operator, a probation window running) writes nothing.
        fingerprint = _fingerprint(rollout)
        if rollout.dirty or notes or fingerprint != self._saved.get(rollout.state.id):
            rid = rollout.state.id
            # A shared store: only over the version this process last read or wrote, so an
            # operator's verb saved meanwhile by another replica is never overwritten.
            expected = self._version.get(rid) if self.shared else None
            save(self.store, rollout, notes, expect_updated_at=expected)
            self._version[rid] = rollout.state.updated_at
            self._saved[rollout.state.id] = fingerprint
            self._stored[rollout.state.id] = _state_key(rollout.state.to_json())
        if rollout.status not in ACTIVE:
            self._live.pop(rollout.state.id, None)

    def _dispatch(self, rollout: Rollout, device_id: str, now: float) -> list[Action]:
        artifact = rollout.plan.artifact
        try:
            device = self.store.get_device(device_id)
            current = device.desired
            previous = _current_target(device, artifact.kind, self.resolver)
            version = self._set_desired(
                device_id, current, artifact.kind, artifact.target_ref(), rollout.state.id, now
            )
        except EdgefleetError as exc:
            return rollout.not_delivered(device_id, str(exc), now)
        rollout.delivered(
            device_id, version, now, previous.model_dump(mode="json") if previous else None
        )
        return []

    def _shadow(self, rollout: Rollout, action: Shadow, now: float) -> None:
        """Ask the devices to run the artifact beside their model (or to stop): their
        desired state keeps its model and firmware and gains (or loses) ``shadow``."""
        shadow = rollout.plan.artifact.target_ref() if action.start else None
        for device_id in action.device_ids:
            try:
                device = self.store.get_device(device_id)
                current = device.desired
                if not action.start and (current is None or current.shadow is None):
                    continue
                kind = rollout.plan.artifact.kind
                target = getattr(current, kind) if current is not None else None
                self._set_desired(
                    device_id, current, kind, target, rollout.state.id, now, shadow=shadow
                )
            except EdgefleetError as exc:
                log.warning("rollout %s: shadow run on %s: %s", rollout.state.id, device_id, exc)

    def _revert(self, rollout: Rollout, action: Revert, now: float) -> list[Action]:
        kind = rollout.plan.artifact.kind
        try:
            device = self.store.get_device(action.device_id)
            target = TargetRef.model_validate(action.previous) if action.previous else None
            version = self._set_desired(
                action.device_id, device.desired, kind, target, rollout.state.id, now
            )
        except EdgefleetError as exc:
            return rollout.not_delivered(action.device_id, str(exc), now)
        rollout.delivered(action.device_id, version, now)
        return []

    def _set_desired(
        self,
        device_id: str,
        current: DesiredState | None,
        kind: ArtifactKind,
        target: TargetRef | None,
        rollout_id: str,
        now: float,
        *,
        shadow: TargetRef | None = None,
    ) -> int:
        """The device's desired state with its ``kind`` artifact set to ``target``."""
        fields: DesiredFields = {
            "model": current.model if current else None,
            "firmware": current.firmware if current else None,
            "config": current.config if current else {},
            "shadow": shadow,
        }
        fields[kind] = target
        desired = self.twin.set_desired(
            device_id, fields, actor=f"rollout:{rollout_id}", rollout_id=rollout_id, now=now
        )
        return desired.version


def _fingerprint(rollout: Rollout) -> str:
    state = rollout.state.to_json()
    state.pop("updated_at")
    return json.dumps(state, sort_keys=True)


def _state_key(state: dict[str, Any]) -> str:
    return json.dumps(state, sort_keys=True)


def _snapshot(rollout: Rollout) -> Rollout:
    return Rollout(
        rollout.plan,
        RolloutState.from_json(rollout.state.to_json()),
        [DeviceProgress.from_json(d.to_json()) for d in rollout.devices.values()],
    )


def _running(device: Device, plan: RolloutPlan) -> str | None:
    if plan.artifact.kind == "model":
        if device.model_name and device.model_version:
            return f"{device.model_name}@{device.model_version}"
        return None
    return f"{plan.artifact.name}@{device.firmware_version}" if device.firmware_version else None


def _current_target(
    device: Device, kind: ArtifactKind, resolver: ArtifactResolver | None
) -> TargetRef | None:
    """What the device is meant to run now: its desired target, else what it reports."""
    desired = device.desired
    wanted = (desired.model if kind == "model" else desired.firmware) if desired else None
    if wanted is not None:
        return wanted
    rep = device.reported
    if rep is None or resolver is None:
        return None
    spec = None
    if kind == "model" and rep.model is not None:
        spec = f"{rep.model.name}@{rep.model.version}"
    if spec is None:
        return None
    try:
        return resolver.resolve(spec).target_ref()
    except EdgefleetError:
        return None


def _report(rollout: Rollout, device: Device, now: float) -> list[Action]:
    rep = device.reported
    update = rep.update if rep else None
    return rollout.device_report(
        device.id,
        now=now,
        online=device.online,
        phase=update.phase if update else None,
        update_version=update.desired_version if update else None,
        applied_version=rep.desired_version if rep else None,
        error=update.error if update else None,
        running=_running(device, rollout.plan),
        health=device.health,
    )
