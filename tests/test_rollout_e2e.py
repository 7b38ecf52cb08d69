"""Rollouts end to end: real server, broker, store, REST API and device links.

The devices are real :class:`DeviceLink` sessions (mTLS, ACL, spool) whose
command handler plays the device updater: it acknowledges ``set_desired``,
reports update phases in its retained state, "switches" model and sends
telemetry from the model it runs — a model marked bad errs on 30% of its
inferences, which is what the health gate must catch.
"""

from __future__ import annotations

import random
from pathlib import Path

import httpx

from fleet_server.rollouts.artifacts import ResolvedArtifact
from fleet_server.rollouts.persist import load
from fleet_server.store import open_store

from .harness import wait_for, wait_ports_free
from .rollout_devices import Api, SimDevice, rollout_fleet, start_server
from .test_rollout_driver import TableResolver


def artifact(version: str) -> ResolvedArtifact:
    return ResolvedArtifact(
        "model",
        "digits",
        version,
        f"models/digits/{version}/digits-{version}-onnx-int8.efpkg",
        "ab" * 32,
        100,
    )


def resolver() -> TableResolver:
    r = TableResolver()
    r.table = {f"digits@{v}": artifact(v) for v in ("1.0.0", "2.0.0", "3.0.0")}
    return r


PLAN = {
    "target": "tag:site=e2e",
    "canary": "1",
    "waves": "50%,100%",
    "pace": "600/min",
    "probation": "2s",
    "gates": ["error_rate<0.05", "p95_latency_ms<40", "install_success_rate>=1"],
}


def test_v2_rolls_out_in_waves_and_a_bad_v3_rolls_itself_back(tmp_path: Path) -> None:
    with rollout_fleet(tmp_path, "e2e", 10, SimDevice) as fleet:
        server, devices, store = fleet.server, fleet.devices, fleet.server.store
        fleet.wait_running("1.0.0")
        api = fleet.api
        v2 = api.post("/rollouts", {**PLAN, "artifact": "digits@2.0.0"})
        assert [w["cumulative"] for w in v2["waves"]] == [1, 5, 10]
        done = api.wait_status(v2["id"], {"completed", "halted", "rolled_back"})
        assert done["status"] == "completed", done
        assert all(d.version == "2.0.0" for d in devices)
        assert all(w["gates"] and all(g["passed"] for g in w["gates"]) for w in done["waves"])
        assert done["waves"][0]["gates"][0]["value"] == 0.0  # measured, not "no data"
        first_sent = {x["device_id"]: x["sent_at"] for x in done["devices_detail"]}
        canary = done["devices_detail"][0]["device_id"]
        assert all(t >= first_sent[canary] for t in first_sent.values())

        v3 = api.post("/rollouts", {**PLAN, "artifact": "digits@3.0.0"})
        back = api.wait_status(v3["id"], {"rolled_back", "completed"})
        assert back["status"] == "rolled_back", back
        assert "error_rate<0.05" in back["reason"] and "automatic rollback" in back["reason"]
        touched = [x for x in back["devices_detail"] if x["status"] != "skipped"]
        assert len(touched) == 1 and touched[0]["status"] == "rolled_back"
        canary3 = next(d for d in devices if d.id == touched[0]["device_id"])
        wait_for(lambda: canary3.version == "2.0.0", 30, "canary back on v2")
        desired = store.get_device(canary3.id).desired
        assert desired is not None and desired.model is not None
        assert desired.model.target == artifact("2.0.0").target_path
        assert artifact("2.0.0").target_path in server.tuf.targets().signed.targets
        assert sum(d.version == "3.0.0" for d in devices) == 0
        assert server.rollouts.errors == 0
        metrics = httpx.get(f"{api.url}/metrics").text
        assert "edgefleet_rollouts_live 0" in metrics
        assert "edgefleet_rollout_errors_total 0" in metrics


def test_offline_device_is_retried_and_a_server_restart_mid_wave_continues(
    tmp_path: Path,
) -> None:
    with rollout_fleet(tmp_path, "rs", 6, SimDevice) as fleet:
        settings, devices, store = fleet.settings, fleet.devices, fleet.server.store
        # The rollout's order is the sorted ids shuffled by its seed: take the last one away.
        order = sorted(d.id for d in devices)
        random.Random(5).shuffle(order)
        away = next(d for d in devices if d.id == order[-1])
        away.stop()
        wait_for(lambda: not store.get_device(away.id).online, 60, "device offline")
        api = fleet.api
        plan = {**PLAN, "artifact": "digits@2.0.0", "pace": "12/min", "waves": "100%", "seed": 5}
        rid = api.post("/rollouts", plan)["id"]
        # Mid-wave: the canary is done and wave 1 has begun, at one device per 5 s.
        wait_for(lambda: sum(d.version == "2.0.0" for d in devices) >= 2, 60, "wave 1 under way")
        fleet.server.stop()
        stopped = open_store(settings.database_url)
        saved = load(stopped, rid)
        stopped.close()
        assert saved.state.wave == 1 and saved.status == "wave"
        assert any(d.status == "queued" for d in saved.devices.values())
        wait_ports_free(settings.api.port, settings.broker.port)
        fleet.server = server = start_server(settings)
        api = Api(server)
        wait_for(
            lambda: api.get(f"/rollouts/{rid}")["devices_detail"][-1]["status"] == "offline",
            90,
            "the away device found offline at its turn",
        )
        away.start()
        done = api.wait_status(rid, {"completed", "halted", "rolled_back"}, timeout=120)
        assert done["status"] == "completed", done
        assert all(d.version == "2.0.0" for d in devices)
        last = done["devices_detail"][-1]
        assert last["device_id"] == away.id and last["status"] == "succeeded"
        kinds = [e["kind"] for e in done["events"]]
        assert "retry" in kinds and kinds.count("started") == 1
        assert server.rollouts.errors == 0
