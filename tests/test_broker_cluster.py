"""A fleet on a 3-node RabbitMQ cluster: a node killed mid-stream loses nothing.

Devices are spread over the nodes; the server consumes the replicated ingest
queue through one node and sends through another.  ``kill -9`` of a node (the one
the ingest consumer uses, with devices on it) must leave every batch stored
exactly once, the devices of that node reconnected to the others, and presence
right: online for those that came back, offline (Last Will) for one that did not.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.link import DeviceLink
from edgefleet_contract.codec import Codec
from edgefleet_contract.messages import ReportedState, Telemetry
from edgefleet_contract.topics import Channel
from fleet_server.rabbitmq_local import LocalRabbitCluster

from .cluster_fleet import cluster_link, cluster_server
from .harness import Pki, wait_for

DEVICES = 4
BATCHES = 40


def _send(link: DeviceLink, n: int) -> None:
    batch = Telemetry(
        device_id=link.device_id, batch_id=f"b{n:03d}", seq=n, ts=time.time(), window_s=1
    )
    link.send(Channel.TELEMETRY, Codec().encode(batch))


def test_training_round_with_devices_on_different_nodes(
    rabbit: LocalRabbitCluster, pki: Pki, tmp_path: Path
) -> None:
    """A federated round whose frames go out through one node and come back through the
    quorum queue from devices connected to the other nodes."""
    from fleet_server.federation.spec import LocalTraining, RunSpec
    from fleet_server.modelkit.digits import split

    from .fl_helpers import MODEL, dirichlet_parts, make_device

    server = cluster_server(rabbit, pki, tmp_path / "fleet", start_package=True)
    server.start()
    fleet = []
    try:
        data = split()
        parts = dirichlet_parts(data.y_train, 3, alpha=0.5, seed=3)
        fleet = [
            make_device(server, tmp_path / "devs", f"cf-{i}", data.x_train[p], data.y_train[p])
            for i, p in enumerate(parts)
        ]
        wait_for(lambda: all(d.link.connected.is_set() for d in fleet), what="connected")
        assert len({d.link.target for d in fleet}) == 3, "devices are not on different nodes"
        wait_for(
            lambda: all(server.store.get_device(d.link.device_id).online for d in fleet),
            what="online",
        )
        spec = RunSpec.model_validate(
            {
                "model": MODEL,
                "target": "tag:fl=yes",
                "strategy": "fedavg",
                "rounds": 1,
                "min_clients": 3,
                "round_timeout_s": 120,
                "local": LocalTraining(epochs=2, lr=0.2, batch_size=16),
            }
        )
        run = server.training.start_run(spec, actor="test")

        def done() -> bool:
            return server.store.get_training_run(run.id).status not in ("pending", "running")  # type: ignore[attr-defined]

        wait_for(done, 240, "run finished")
        status = server.store.get_training_run(run.id)  # type: ignore[attr-defined]
        assert status.status == "completed", status
        rounds = server.store.list_rounds(run.id)  # type: ignore[attr-defined]
        assert len(rounds) == 1 and len(rounds[0].participants) == 3
    finally:
        for d in fleet:
            d.stop()
        server.stop()


def test_rollout_with_devices_on_different_nodes(
    rabbit: LocalRabbitCluster, pki: Pki, tmp_path: Path
) -> None:
    """Commands go out through the server's node, acks and reported state come back
    through the quorum queue from devices on the others; the rollout completes."""
    from .ota_server import DIGITS, model_version
    from .rollout_devices import Api, SimDevice

    server = cluster_server(rabbit, pki, tmp_path / "fleet")
    (tmp_path / "packages").mkdir()
    for version in ("1.0.0", "2.0.0"):
        path = DIGITS if version == "1.0.0" else model_version(tmp_path / "packages", version)
        server.artifacts.add_model(path, lineage={"source": "test"}, actor="test")
    server.start()
    devices = [SimDevice(server, tmp_path / "devs" / f"cr-{i}", f"cr-{i}") for i in range(3)]
    try:
        for d in devices:
            d.start()
        wait_for(lambda: server.store.count_online() == 3, 30, "all devices online")
        assert len({d.link.target for d in devices if d.link}) == 3, "not on different nodes"
        api = Api(server)
        plan = {
            "target": "tag:site=e2e",
            "canary": "1",
            "waves": "100%",
            "pace": "600/min",
            "probation": "1s",
            "gates": ["install_success_rate>=1"],
            "artifact": "digits@2.0.0",
        }
        rollout = api.post("/rollouts", plan)
        done = api.wait_status(rollout["id"], {"completed", "halted", "rolled_back"}, 120)
        assert done["status"] == "completed", done
        assert all(d.version == "2.0.0" for d in devices)
    finally:
        for d in devices:
            d.stop()
        server.stop()


def test_node_killed_mid_stream_loses_no_batch(
    rabbit: LocalRabbitCluster, pki: Pki, tmp_path: Path
) -> None:
    cluster = rabbit
    server = cluster_server(cluster, pki, tmp_path / "fleet")
    server.presence_sweep_s = 1.0
    server.start()
    links: list[DeviceLink] = []
    victim_node = cluster.nodes[0]  # ingest consumes through it first; devices start on it
    doomed: DeviceLink | None = None
    try:
        links = [
            cluster_link(server, cluster, tmp_path / f"d{i}", f"cl-{i}", node=i % 3)
            for i in range(DEVICES)
        ]
        # one more device on the node to kill, which dies with it: no Last Will for it
        doomed = cluster_link(server, cluster, tmp_path / "doomed", "cl-doomed", node=0)
        for link in [*links, doomed]:
            link.start()
            link.report(
                ReportedState(
                    device_id=link.device_id, ts=time.time(), agent_version="test", health="ok"
                )
            )
        wait_for(
            lambda: all(link.connected.is_set() for link in [*links, doomed]), what="all connected"
        )
        assert server.upstream is not None
        wait_for(server.upstream.connected.is_set, what="ingest consumer")
        store = server.store
        wait_for(lambda: store.count_online() == DEVICES + 1, what="all online")
        assert "edgefleet_broker_nodes_running 3" in server.metrics.render()

        for n in range(BATCHES // 2):
            for link in links:
                _send(link, n)
        generations = {link.device_id: link.generation for link in links}
        victim_port = ("127.0.0.1", victim_node.ports.mqtts)
        on_victim = [link for link in links if link.target == victim_port]
        assert on_victim, "no device on the node to kill"
        assert doomed.target == victim_port, "the doomed device did not start on node 0"
        victim_node.kill_hard()
        doomed.stop(timeout=1)
        wait_for(
            lambda: "edgefleet_broker_nodes_running 2" in server.metrics.render(),
            what="the server to see one node down",
        )
        for n in range(BATCHES // 2, BATCHES):
            for link in links:
                _send(link, n)

        def stored(device_id: str) -> list[str]:
            return [b.batch_id for b in store.query_raw(device_id, since=0, until=1e11)]

        wait_for(
            lambda: all(len(stored(link.device_id)) == BATCHES for link in links),
            timeout=120,
            what="every batch stored",
        )
        for link in links:
            assert stored(link.device_id) == [f"b{n:03d}" for n in range(BATCHES)]
        wait_for(lambda: all(link.spool.stats().depth == 0 for link in links), what="spools")
        # the devices that were on the killed node came back through another one
        for link in on_victim:
            assert link.generation > generations[link.device_id]
            assert link.target != victim_port
        # the doomed device's Last Will died with the node: the presence sweep finds no
        # connection for it on any node and marks it offline; the others are online
        wait_for(lambda: not store.get_device("cl-doomed").online, what="doomed offline")
        wait_for(lambda: store.count_online() == DEVICES, what="all online again")
        # a device that dies now is offline through its Last Will, published by a survivor
        lost = links.pop(1)
        sock = lost._client.socket()
        assert sock is not None
        sock.close()
        lost.stop(timeout=1)
        wait_for(lambda: not store.get_device(lost.device_id).online, what="Last Will")
        assert store.count_online() == DEVICES - 1
    finally:
        for link in links:
            link.stop(timeout=2)
        if doomed is not None:
            doomed.stop(timeout=1)
        server.stop()  # the `rabbit` fixture starts the killed node again for a next test
