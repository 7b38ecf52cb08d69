"""Several fleet-server processes on one PostgreSQL database, and kill -9 of the one that
holds the rollout lease in the middle of a wave.

Two API replicas on two ports, one ingest worker and two workers competing for the
singleton leases; real PostgreSQL (private cluster), real mosquitto (mTLS, ACL),
real device links.  The devices count their own installs, so "every device
commits once" is what the devices saw, not what the server believes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet_contract.messages import UpdateReport

from .harness import wait_for
from .replica_kit import TIMEOUT_S, AdminApi, Cluster
from .rollout_devices import SimDevice

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
