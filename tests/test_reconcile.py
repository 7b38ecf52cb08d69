"""The twin reconciler over the real SQLite store: who is told again, how often, and what
a failed send leaves behind.  The server-and-daemon path (the reconciler answering a real
state report) is tests/test_agent_commands_e2e.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet_contract.errors import LinkError
from edgefleet_contract.messages import Command, DesiredState, ReportedState
from fleet_server.reconcile import Reconciler
from fleet_server.store import SqliteStore, open_store


class Outbox:
    """Stands in for the MQTT link's ``send_command`` (``down``: the broker is unreachable)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Command]] = []
        self.down = False

    def send_command(self, device_id: str, command: Command) -> None:
        if self.down:
            raise LinkError("broker unreachable")
        self.sent.append((device_id, command))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = open_store(tmp_path / "fleet.db")
    assert isinstance(s, SqliteStore)
    s.create_device("d1", name="d1", tags={}, now=0)
    return s


def report(store: SqliteStore, applied: int, ts: float) -> None:
    state = ReportedState(device_id="d1", ts=ts, agent_version="1", desired_version=applied)
    store.set_reported("d1", state, ts)


def test_a_device_behind_is_told_again_at_most_once_per_interval(store: SqliteStore) -> None:
    out, clock = Outbox(), Clock()
    reconcile = Reconciler(store, out, min_interval_s=30, clock=clock)
    store.set_presence("d1", online=True, ts=clock.now)
    report(store, 0, clock.now)
    reconcile("d1")
    assert out.sent == []  # no desired state yet: nothing to say
    store.set_desired("d1", DesiredState(version=2, config={"telemetry_interval_s": 5}))
    reconcile("d1")
    assert [(d, c.name, c.args["version"]) for d, c in out.sent] == [("d1", "set_desired", 2)]
    assert out.sent[0][1].expires_at is not None and out.sent[0][1].expires_at > clock.now
    listed = store.list_commands("d1")
    assert [(c.id, c.actor) for c in listed] == [(out.sent[0][1].id, "reconciler")]
    clock.now += 10
    reconcile("d1")  # still behind, but told 10 s ago
    assert len(out.sent) == 1
    store.set_desired("d1", DesiredState(version=3))
    reconcile("d1")  # a newer desired state goes out at once
    assert len(out.sent) == 2 and out.sent[1][1].args["version"] == 3
    clock.now += 31
    reconcile("d1")  # the interval passed: told again
    assert len(out.sent) == 3
    report(store, 3, clock.now)
    clock.now += 31
    reconcile("d1")  # caught up: nothing more
    assert len(out.sent) == 3


def test_offline_devices_are_left_alone_and_a_failed_send_is_retried(
    store: SqliteStore,
) -> None:
    out, clock = Outbox(), Clock()
    reconcile = Reconciler(store, out, min_interval_s=30, clock=clock)
    store.set_desired("d1", DesiredState(version=1))
    reconcile("d1")
    assert out.sent == []  # offline: it will be told when it comes back
    store.set_presence("d1", online=True, ts=clock.now)
    out.down = True
    reconcile("d1")  # the broker refused: logged, not recorded, not throttled
    assert out.sent == [] and store.list_commands("d1") == []
    out.down = False
    reconcile("d1")
    assert len(out.sent) == 1 and len(store.list_commands("d1")) == 1
