"""The rollout driver over a real SQLite store: desired state, reports, gates, restarts.

Devices are played by writing their reported state into the store the way
ingest does and telling the driver, as ingest's hook does; no broker here
(the server-level test has one), so desired states are stored and the
reconciler's job of delivering them is out of scope.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgefleet_contract.errors import NotFound, PlanError, StoreError
from edgefleet_contract.messages import (
    InferenceStats,
    LatencySummary,
    ModelRef,
    ReportedState,
    Telemetry,
    UpdateReport,
)
from fleet_server.rollouts.driver import RolloutDriver
from fleet_server.rollouts.gates import parse_gate
from fleet_server.rollouts.persist import load
from fleet_server.rollouts.plan import Share
from fleet_server.store import open_store
from fleet_server.store.base import Store

from .rollout_sim import ARTIFACT, plan

T0 = 1_700_000_000.0


class TableResolver:
    """The registry's seam, over a dict (the real registry is a separate module)."""

    def __init__(self) -> None:
        self.table = {"digits@1.3.0": ARTIFACT}

    def resolve(self, spec: str):  # type: ignore[no-untyped-def]
        if spec not in self.table:
            raise NotFound(f"no artifact {spec!r}")
        return self.table[spec]


def fleet(path: Path, n: int, *, offline: frozenset[str] = frozenset()) -> Store:
    store = open_store(path)
    for i in range(n):
        d = f"dev-{i:02d}"
        store.create_device(d, name=d, tags={"site": "lab"}, now=T0)
        store.add_certificate(d, serial=1000 + i, not_after=T0 + 1e6, now=T0)
        store.set_presence(d, online=d not in offline, ts=T0)
    return store


def answer(
    store: Store,
    driver: RolloutDriver,
    now: float,
    *,
    fail: frozenset[str] = frozenset(),
    slow_ms: float = 5.0,
) -> None:
    """Every online device behind its desired state applies it and reports back."""
    for d in store.list_devices(limit=1000).items:
        desired = d.desired
        applied = d.reported.desired_version if d.reported else 0
        if desired is None or not d.online or applied >= desired.version:
            continue
        target = desired.model
        model = None
        update = None
        if target is not None:
            bad = d.id in fail
            update = UpdateReport(
                desired_version=desired.version,
                kind="model",
                target=target.target,
                phase="rolled_back" if bad else "committed",
                error="self-test failed" if bad else None,
                ts=now,
            )
            if not bad:
                model = ModelRef(
                    name=target.name, version=target.version, sha256="cd" * 32, runtime="onnx"
                )
        state = ReportedState(
            device_id=d.id,
            ts=now,
            agent_version="t",
            health="ok",
            model=model,
            desired_version=desired.version,
            update=update,
        )
        store.set_reported(d.id, state, now)
        if model is not None:
            batch = Telemetry(
                device_id=d.id,
                batch_id=f"boot1-{int(now)}",
                seq=1,
                ts=now + 1,
                window_s=10,
                inference=InferenceStats(
                    model=model.name,
                    version=model.version,
                    count=100,
                    errors=0,
                    throughput_per_s=10,
                    latency=LatencySummary(p50_ms=2, p95_ms=slow_ms, p99_ms=9, max_ms=9, mean_ms=3),
                ),
            )
            store.insert_telemetry([batch], received_at=now + 1)
        driver.device_updated(d.id)


def run(store: Store, driver: RolloutDriver, start: float, seconds: int, **kw: object) -> float:
    now = start
    for _ in range(seconds):
        now += 1
        driver.step(now)
        answer(store, driver, now, **kw)  # type: ignore[arg-type]
    return now


def the_plan(**kw: object):  # type: ignore[no-untyped-def]
    base: dict[str, object] = {
        "selector": "tag:site=lab",
        "canary": Share(count=1),
        "waves": (0.5, 1.0),
        "pace_per_min": 120.0,
        "probation_s": 30.0,
        "gates": (parse_gate("p95_latency_ms<40"), parse_gate("install_success_rate>=1")),
    }
    base.update(kw)
    return plan(**base)


def test_rollout_completes_through_the_store(tmp_path: Path) -> None:
    store = fleet(tmp_path / "f.db", 10)
    driver = RolloutDriver(store, None, resolver=TableResolver())
    r = driver.create(the_plan(), actor="alice", now=T0)
    run(store, driver, T0, 300)
    assert driver.get(r.state.id).status == "completed"
    row = store.get_rollout(r.state.id)
    assert row.status == "completed" and row.artifact == "digits@1.3.0"
    for d in store.list_devices(limit=100).items:
        assert d.desired is not None and d.desired.rollout_id == r.state.id
        assert d.desired.model is not None and d.desired.model.target == ARTIFACT.target_path
        assert d.model_version == "1.3.0"
    kinds = [e.kind for e in store.rollout_events(r.state.id)]
    assert kinds[:2] == ["created", "started"] and kinds[-1] == "completed"
    assert kinds.count("gates_passed") == 3
    gates = store.get_rollout(r.state.id).state["gate_results"]["2"]
    assert gates[0]["value"] == pytest.approx(5.0) and gates[1]["value"] == 1.0
    sent = [c for d in store.list_devices(limit=100).items for c in store.list_commands(d.id)]
    assert all(c.actor == f"rollout:{r.state.id}" for c in sent) and len(sent) == 10
    store.close()


def test_slow_canary_fails_its_gate_and_is_reverted_to_what_it_ran(tmp_path: Path) -> None:
    store = fleet(tmp_path / "f.db", 6)
    before = ModelRef(name="digits", version="1.2.0", sha256="ee" * 32, runtime="onnx")
    for d in store.list_devices(limit=100).items:
        store.set_reported(
            d.id, ReportedState(device_id=d.id, ts=T0, agent_version="t", model=before), T0
        )
    resolver = TableResolver()
    resolver.table["digits@1.2.0"] = type(ARTIFACT)(
        "model", "digits", "1.2.0", "models/digits/1.2.0/digits-1.2.0.efpkg", "ee" * 32, 10
    )
    driver = RolloutDriver(store, None, resolver=resolver)
    r = driver.create(the_plan(), actor="alice", now=T0)
    run(store, driver, T0, 200, slow_ms=80.0)
    rid = r.state.id
    loaded = load(store, rid)
    assert loaded.status == "rolled_back"
    assert "p95_latency_ms<40 (measured 80)" in loaded.state.reason
    canary = [d for d in loaded.devices.values() if d.wave == 0]
    assert [d.status for d in canary] == ["rolled_back"]
    dev = store.get_device(canary[0].device_id)
    assert dev.desired is not None and dev.desired.model is not None
    assert dev.desired.model.version == "1.2.0"
    assert dev.desired.model.target == "models/digits/1.2.0/digits-1.2.0.efpkg"
    others = [store.get_device(d.device_id) for d in loaded.devices.values() if d.wave > 0]
    assert all(d.desired is None for d in others)
    store.close()


def test_restart_mid_wave_resumes_exactly(tmp_path: Path) -> None:
    """Run A straight through; run B with the driver dropped and rebuilt mid-wave."""
    results = []
    for restart in (False, True):
        path = tmp_path / f"{restart}.db"
        store = fleet(path, 12, offline=frozenset({"dev-07"}))
        driver = RolloutDriver(store, None)
        p = the_plan(jitter_s=20.0, pace_per_min=30.0, seed=3)
        rid = driver.create(p, actor="alice", now=T0).state.id
        now = run(store, driver, T0, 70)
        if restart:
            assert load(store, rid).state.wave == 1  # mid-wave
            store.close()
            store = open_store(path)
            driver = RolloutDriver(store, None)
        now = run(store, driver, now, 60)
        store.set_presence("dev-07", online=True, ts=now)
        driver.device_updated("dev-07")
        now = run(store, driver, now, 200)
        r = load(store, rid)
        devices = {k: d.to_json() for k, d in r.devices.items()}
        events = [(e.ts, e.kind, e.device_id) for e in store.rollout_events(rid)]
        state = r.state.to_json()
        state.pop("id")
        results.append((r.status, state, devices, events))
        store.close()
    assert results[0][0] == "completed"
    assert results[0][2]["dev-07"]["status"] == "succeeded"
    assert results[0] == results[1]


def test_create_refuses_an_empty_target_and_overlaps(tmp_path: Path) -> None:
    store = fleet(tmp_path / "f.db", 3)
    driver = RolloutDriver(store, None)
    with pytest.raises(PlanError, match="matches no free device"):
        driver.create(the_plan(selector="tag:site=mars"), actor="alice", now=T0)
    driver.create(the_plan(), actor="alice", now=T0)
    with pytest.raises(PlanError, match="3 are in another live rollout"):
        driver.create(the_plan(), actor="alice", now=T0)
    store.close()


def test_driver_thread_ticks_on_its_own(tmp_path: Path) -> None:
    store = fleet(tmp_path / "f.db", 2)
    driver = RolloutDriver(store, None, interval_s=0.05)
    r = driver.create(the_plan(probation_s=0.0, gates=()), actor="alice")
    driver.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and driver.get(r.state.id).status != "completed":
            answer(store, driver, time.time())
            time.sleep(0.05)
    finally:
        driver.stop()
    assert driver.get(r.state.id).status == "completed"
    assert driver.errors == 0
    store.close()


def test_a_corrupt_rollout_row_does_not_stop_the_others(tmp_path: Path) -> None:
    from fleet_server.store.base import RolloutRow

    store = fleet(tmp_path / "f.db", 2)
    good = RolloutDriver(store, None).create(the_plan(), actor="alice", now=T0).state.id
    bad = RolloutRow("r-bad", "canary", "x@1", T0, "alice", T0, plan={"oops": 1}, state={})
    store.save_rollout(bad, create=True)
    driver = RolloutDriver(store, None)
    assert driver.errors == 1
    run(store, driver, T0, 200)
    assert driver.get(good).status == "completed"
    assert store.get_rollout("r-bad").status == "canary"  # left as it was, for a person to see
    with pytest.raises(StoreError, match="r-bad is stored in a form this server cannot read"):
        driver.get("r-bad")
    store.close()


def test_a_failed_save_reloads_the_last_good_state_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgefleet_contract.errors import StoreError as Err

    store = fleet(tmp_path / "f.db", 4)
    driver = RolloutDriver(store, None)
    rid = driver.create(the_plan(), actor="alice", now=T0).state.id
    real = store.save_rollout
    calls = {"n": 0}

    def flaky(*a: object, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise Err("disk full")
        real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "save_rollout", flaky)
    run(store, driver, T0, 300)
    assert driver.errors == 1
    assert load(store, rid).status == "completed"
    assert all(d.model_version == "1.3.0" for d in store.list_devices(limit=10).items)
    store.close()
