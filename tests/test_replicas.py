"""Several fleet-server processes on one PostgreSQL database, and kill -9 of the one that
holds the rollout lease in the middle of a wave.

Two API replicas on two ports, one ingest worker and two workers competing for the
singleton leases; real PostgreSQL (private cluster), real mosquitto (mTLS, ACL),
real device links.  The devices count their own installs, so "every device
commits once" is what the devices saw, not what the server believes.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.learning.worker import LearningWorker
from edgefleet_contract.messages import UpdateReport
from fleet_server.modelkit.digits import split
from fleet_server.modelkit.partition import dirichlet_parts

from .fl_helpers import MODEL, make_device, write_start_package
from .harness import wait_for
from .replica_kit import TIMEOUT_S, AdminApi, Cluster
from .rollout_devices import SimDevice

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

NAMES = ["api-1", "api-2", "ingest-1", "worker-a", "worker-b"]
PLAN = {
    "target": "tag:site=e2e",
    "canary": "1",
    "waves": "50%,100%",
    "pace": "600/min",
    "probation": "4s",
    "gates": ["install_success_rate>=1"],
}


class CountingDevice(SimDevice):
    """A simulated device that counts the installs it committed."""

    commits: Counter[str] = Counter()

    def report(self, update: UpdateReport | None) -> None:
        if update is not None and update.phase == "committed":
            CountingDevice.commits[self.id] += 1
        super().report(update)


@pytest.fixture
def cluster(tmp_path: Path, pg_dsn: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, pg_dsn, NAMES)
    try:
        yield c
    finally:
        c.close()


def test_two_api_replicas_serve_one_fleet_and_a_killed_rollout_holder_hands_over(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.publish_models(tmp_path / "packages")
    api1, api2 = cluster.start("api-1", "api"), cluster.start("api-2", "api")
    cluster.start("ingest-1", "ingest")
    workers = {n: cluster.start(n, "worker") for n in ("worker-a", "worker-b")}
    devices = [
        CountingDevice(cluster.device_host(), tmp_path / "devs" / f"rep-{i}", f"rep-{i}")
        for i in range(4)
    ]
    CountingDevice.commits.clear()
    api1.wait_api()
    api2.wait_api()
    one, two = AdminApi(api1.url), AdminApi(api2.url)
    for d in devices:
        d.start()
    store = cluster.store
    wait_for(lambda: store.count_online() == 4, TIMEOUT_S, "all devices online (ingest worker)")
    # One fleet through both doors: a login on one replica is a session on the other too.
    assert sorted(d["id"] for d in one.get("/devices")["items"]) == [d.id for d in devices]
    seen = [(d["id"], d["model"], d["online"]) for d in two.get("/devices")["items"]]
    assert seen == [(d.id, "digits@1.0.0", True) for d in devices]
    wait_for(lambda: cluster.lease_holder("rollouts") is not None, TIMEOUT_S, "a rollout holder")

    rollout = two.post("/rollouts", {**PLAN, "artifact": "digits@2.0.0"})
    rid = rollout["id"]

    def succeeded() -> int:
        detail = one.get(f"/rollouts/{rid}")["devices_detail"]
        return sum(x["status"] == "succeeded" for x in detail)

    wait_for(lambda: succeeded() >= 1, TIMEOUT_S, "the canary to succeed")
    holder = cluster.lease_holder("rollouts")
    assert holder in workers
    assert succeeded() < len(devices)  # mid-rollout: the kill lands before the last wave
    workers[holder].kill9()
    survivor = next(n for n in workers if n != holder)
    wait_for(lambda: cluster.lease_holder("rollouts") == survivor, TIMEOUT_S, "the takeover")
    wait_for(
        lambda: one.get(f"/rollouts/{rid}")["status"] in {"completed", "halted", "rolled_back"},
        TIMEOUT_S,
        "the rollout to finish",
    )
    done = two.get(f"/rollouts/{rid}")
    assert done["status"] == "completed", done
    assert all(d.version == "2.0.0" for d in devices)
    assert CountingDevice.commits == Counter({d.id: 1 for d in devices})
    for d in devices:
        d.stop()


class HeldWorker(LearningWorker):
    """Holds its answers to round 2 until the test opens the gate (the kill lands meanwhile)."""

    gate = threading.Event()

    def answer_native(self, instruction, arrays):  # type: ignore[no-untyped-def]
        if int(instruction.config.get("server-round", 0)) >= 2:
            HeldWorker.gate.wait(TIMEOUT_S)
        return super().answer_native(instruction, arrays)


def test_kill_9_of_the_training_runner_resumes_the_run_from_its_checkpoint_elsewhere(
    cluster: Cluster, tmp_path: Path
) -> None:
    write_start_package(cluster.data_dir / "models")
    api = cluster.start("api-1", "api")
    cluster.start("ingest-1", "ingest")
    workers = {n: cluster.start(n, "worker") for n in ("worker-a", "worker-b")}
    api.wait_api()
    admin = AdminApi(api.url)
    data = split()
    parts = dirichlet_parts(data.y_train, 3, alpha=0.5, seed=3)
    host = cluster.device_host()
    HeldWorker.gate.clear()
    fleet = [
        make_device(host, tmp_path / "fl", f"rfl-{i}", data.x_train[p][:120],
                    data.y_train[p][:120], worker_cls=HeldWorker)
        for i, p in enumerate(parts)
    ]  # fmt: skip
    try:
        store = cluster.store
        wait_for(lambda: all(store.latest_telemetry(d.link.device_id) for d in fleet),
                 TIMEOUT_S, "the devices' learning stats stored")  # fmt: skip
        spec = {"model": MODEL, "target": "tag:fl=yes", "strategy": "fedavg", "rounds": 3,
                "min_clients": 3, "round_timeout_s": 120,
                "local": {"epochs": 1, "lr": 0.2, "batch_size": 16}}  # fmt: skip
        run = admin.post("/training/runs", spec)  # through the API replica, run by a worker
        wait_for(lambda: admin.get(f"/training/runs/{run['id']}")["completed_rounds"] >= 1,
                 TIMEOUT_S, "round 1 checkpointed")  # fmt: skip
        holder = cluster.lease_holder("training")
        assert holder in workers
        workers[holder].kill9()  # mid-round 2: its answers are held
        survivor = next(n for n in workers if n != holder)
        wait_for(lambda: cluster.lease_holder("training") == survivor, TIMEOUT_S, "the takeover")
        HeldWorker.gate.set()
        url = f"/training/runs/{run['id']}"
        wait_for(
            lambda: admin.get(url)["status"] not in ("pending", "running"),
            2 * TIMEOUT_S,
            "the run to finish on the other worker",
        )
        done = admin.get(f"/training/runs/{run['id']}?rounds=true")
        assert done["status"] == "completed", done
        rounds = store.list_rounds(run["id"])
        assert [r.round for r in rounds] == [1, 2, 3]  # round 1 kept, none run twice
        log = (cluster.root / f"{survivor}.log").read_text()
        assert f"training run {run['id']} resumes after round 1" in log
    finally:
        HeldWorker.gate.set()
        for d in fleet:
            d.stop()
