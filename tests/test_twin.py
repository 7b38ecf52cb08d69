"""Desired state takes one path: Twin.set_desired (store, record, send) and Twin.resend.

The API's ``twin set``, the rollout driver and the reconciler all go through it,
over the real SQLite store; what a missing or failing link leaves behind is the
same for each caller.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgefleet_contract.errors import EdgefleetError
from edgefleet_contract.messages import DesiredState, ReportedState
from fleet_server.api import ApiContext, create_app
from fleet_server.auth import hash_password
from fleet_server.config import ApiSettings, ServerSettings
from fleet_server.enrollment import Enrollment
from fleet_server.pki import FleetCA
from fleet_server.reconcile import Reconciler
from fleet_server.rollouts.driver import RolloutDriver
from fleet_server.store import open_store
from fleet_server.store.base import Store
from fleet_server.twin import Twin, target_ref

from .rollout_sim import plan
from .test_reconcile import Outbox

PACKAGE = Path(__file__).resolve().parents[1] / "fleet_server"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = open_store(tmp_path / "fleet.db")
    for d in ("d1", "d2"):
        s.create_device(d, name=d, tags={"site": "lab"}, now=1.0)
        s.add_certificate(d, serial=7 if d == "d1" else 8, not_after=4e9, now=1.0)
        s.set_presence(d, online=True, ts=1.0)
    return s


def test_set_desired_stores_records_and_sends_under_the_next_version(store: Store) -> None:
    link = Outbox()
    twin = Twin(store, link, clock=lambda: 100.0)
    model = target_ref("model", "digits", "1.3.0")
    first = twin.set_desired("d1", {"model": model}, actor="olga")
    second = twin.set_desired("d1", {"config": {"telemetry_interval_s": 5}}, actor="olga")
    assert (first.version, second.version) == (1, 2)
    assert store.get_device("d1").desired == second
    assert [(d, c.args["version"]) for d, c in link.sent] == [("d1", 1), ("d1", 2)]
    records = store.list_commands("d1")
    assert [(r.id, r.actor, r.created_at) for r in records] == [
        (link.sent[1][1].id, "olga", 100.0),
        (link.sent[0][1].id, "olga", 100.0),
    ]
    # The link away: stored and recorded (the reconciler delivers it), nothing sent.
    link.down = True
    third = twin.set_desired("d1", {}, actor="rollout:r-1", rollout_id="r-1")
    assert store.get_device("d1").desired == third and third.rollout_id == "r-1"
    assert len(link.sent) == 2 and len(store.list_commands("d1")) == 3
    unlinked = Twin(store, None).set_desired("d2", {}, actor="olga")
    assert unlinked.version == 1 and len(store.list_commands("d2")) == 1


def test_an_invalid_state_names_the_field_and_stores_nothing(store: Store) -> None:
    link = Outbox()
    twin = Twin(store, link)
    with pytest.raises(EdgefleetError, match=r"invalid desired state: config\.bad key"):
        twin.set_desired("d1", {"config": {"bad key": 1}}, actor="olga")
    assert store.get_device("d1").desired is None
    assert store.list_commands("d1") == [] and link.sent == []


def test_resend_keeps_the_version_and_records_only_what_went_out(store: Store) -> None:
    link = Outbox()
    twin = Twin(store, link)
    desired = twin.set_desired("d1", {}, actor="olga")
    link.down = True
    assert not twin.resend("d1", desired, actor="reconciler")
    assert len(store.list_commands("d1")) == 1
    link.down = False
    assert twin.resend("d1", desired, actor="reconciler")
    assert [c.args["version"] for _, c in link.sent] == [1, 1]
    assert [c.actor for c in store.list_commands("d1")] == ["reconciler", "olga"]
    assert store.get_device("d1").desired == desired  # nothing stored anew
    assert not Twin(store, None).resend("d1", desired, actor="reconciler")


def test_the_api_the_driver_and_the_reconciler_all_take_the_twin_path(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str, str]] = []
    set_desired, resend = Twin.set_desired, Twin.resend

    def spy_set(self: Twin, device_id: str, fields: object, **kw: object) -> DesiredState:
        calls.append(("set", device_id, str(kw["actor"])))
        return set_desired(self, device_id, fields, **kw)  # type: ignore[arg-type]

    def spy_resend(self: Twin, device_id: str, desired: DesiredState, *, actor: str) -> bool:
        calls.append(("resend", device_id, actor))
        return resend(self, device_id, desired, actor=actor)

    monkeypatch.setattr(Twin, "set_desired", spy_set)
    monkeypatch.setattr(Twin, "resend", spy_resend)
    link = Outbox()
    store.create_user("olga", role="operator", password_hash=hash_password("pw-olga-1"), now=1.0)
    ctx = ApiContext(
        settings=ServerSettings(data_dir=tmp_path, api=ApiSettings()),
        store=store,
        enrollment=Enrollment(
            store,
            FleetCA.create(tmp_path / "ca", now=time.time()),
            token_ttl_s=60,
            cert_validity_s=60,
        ),
        commands=link,
    )
    client = TestClient(create_app(ctx))
    token = client.post("/api/v1/auth/login", json={"username": "olga", "password": "pw-olga-1"})
    headers = {"Authorization": f"Bearer {token.json()['token']}"}
    r = client.put("/api/v1/devices/d1/twin/desired", headers=headers, json={"config": {}})
    assert r.status_code == 200, r.text
    rollout = RolloutDriver(store, link).create(plan(selector="id:d2", waves=(1.0,)), actor="x")
    reported = ReportedState(device_id="d1", ts=2.0, agent_version="1", desired_version=0)
    store.set_reported("d1", reported, 2.0)
    Reconciler(store, link)("d1")
    assert calls == [
        ("set", "d1", "olga"),
        ("set", "d2", f"rollout:{rollout.state.id}"),
        ("resend", "d1", "reconciler"),
    ]
    assert [d for d, _ in link.sent] == ["d1", "d2", "d1"]


def test_no_other_module_stores_or_builds_desired_state() -> None:
    """What the spy cannot see: no other module of the package takes a second path."""
    pattern = re.compile(r"store\.set_desired\(|desired_command\(")
    writers = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if pattern.search(p.read_text(encoding="utf-8"))
    )
    assert writers == ["twin.py"]
