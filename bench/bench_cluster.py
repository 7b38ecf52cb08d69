"""The clustered broker (3 RabbitMQ nodes on this host) beside the managed mosquitto.

* ACL probes: the conformance suite's attacks as a count, refused / tried, per broker.
* Node kill: devices spread over the nodes stream batches, one node is SIGKILLed
  (the one the ingest consumer and some devices use); batches lost = sent - stored,
  and how long its devices took to be connected again.  Several seeds, worst beside mean.
* Ingest readings/s through the cluster (MQTT in, quorum queue, AMQP consumer, SQLite)
  as a ratio to the same publishers into a single mosquitto and the same ingest.
* Connections (``BENCH_CLUSTER_DEVICES``, default 10,000; heavy, run it with ``nice``):
  mTLS devices held open across the nodes, with the nodes' memory.

``BENCH_CLUSTER_PARTS`` picks parts (``acl,kill,ingest,connections``; all by default).

Every node asks the client-id check (:mod:`fleet_server.rabbitmq_authz`, run in the
bench's own process) at each login, so the connection and ingest figures include its
questions.  The machine was shared with other work during the 2026-12-03 run (load 5-12).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from edgefleet_common.mqtt import Endpoint, TlsFiles
from fleet_server.amqp_ingest import AmqpIngest
from fleet_server.config import SERVER_IDENTITY
from fleet_server.ingest import Ingest
from fleet_server.link import ServerLink
from fleet_server.pki import FleetCA
from fleet_server.rabbitmq_local import LocalRabbitCluster
from fleet_server.store import open_store
from tests.broker_modes import (
    BrokerUnderTest,
    cluster_admin,
    mosquitto_mode,
    rabbitmq_mode,
)
from tests.harness import Pki, start_broker

from ._lab import client_contexts, insert_devices, raise_fd_limit
from ._publishers import Publishers
from .bench_connections import device
from .bench_ingest import Consumer, payloads, stored_rate

PARTS = os.environ.get("BENCH_CLUSTER_PARTS", "acl,kill,ingest,connections").split(",")
SEEDS = int(os.environ.get("BENCH_CLUSTER_SEEDS", "3"))
DEVICES = int(os.environ.get("BENCH_CLUSTER_DEVICES", "10000"))
MOSQUITTO_10K_MIB = 258  # docs/benchmarks.md, "broker resident memory" at 10,000 devices


# ------------------------------------------------------------------ ACL probes --


def acl_probes(bt: BrokerUnderTest) -> tuple[int, int, list[str]]:
    """(refused, tried, names of probes that got through)."""
    n = int(time.monotonic_ns() % 10**6)
    a, b = f"ba{n}", f"bb{n}"
    a_tls, b_tls = bt.identity(a), bt.identity(b)
    server = bt.probe(bt.pki.server, SERVER_IDENTITY).connect()
    assert server.subscribe(f"devices/{b}/#")
    victim = bt.probe(b_tls, b, clean=False).connect()
    assert victim.publish(f"devices/{b}/status", b"retained", retain=True)
    results: dict[str, bool] = {}
    for ch in ("telemetry", "state", "status", "fl/out", "cmd", "fl/in"):
        p = bt.probe(a_tls, a).connect()
        results[f"publish {ch}"] = not p.publish(f"devices/{b}/{ch}", b"forged")
        p.close()
    for filt in (
        "#",
        "devices/+/#",
        f"devices/{b}/#",
        f"devices/{b}/status",
        f"devices/{b}/cmd",
        f"devices/{b}/fl/in",
        f"devices/{b}/telemetry",
        f"devices/{b}/state",
    ):
        p = bt.probe(a_tls, a).connect()
        assert p.subscribe(f"devices/{a}/cmd")
        if p.subscribe(filt):
            assert server.publish(f"devices/{b}/cmd", b"secret")
            assert server.publish(f"devices/{a}/cmd", b"marker")
            deadline = time.monotonic() + 10
            while not p.got(f"devices/{a}/cmd", b"marker") and time.monotonic() < deadline:
                time.sleep(0.02)
        results[f"subscribe {filt.replace(b, 'B')}"] = not (p.topics_seen() - {f"devices/{a}/cmd"})
        p.close()
    forger = bt.probe(a_tls, a, will=(f"devices/{b}/status", b"forged-will"))
    if forger.try_connect():
        forger.drop()
    honest = bt.probe(bt.identity(f"{b}w"), f"{b}w", will=(f"devices/{b}w/status", b"w")).connect()
    assert server.subscribe(f"devices/{b}w/status")
    honest.drop()
    deadline = time.monotonic() + 15
    while not server.got(f"devices/{b}w/status", b"w") and time.monotonic() < deadline:
        time.sleep(0.02)
    results["last will on another status"] = not server.got(f"devices/{b}/status", b"forged-will")
    impostor = bt.probe(a_tls, b, clean=False)
    impostor.try_connect()
    time.sleep(1.0)  # a count, not a test: give a kick time to show
    results["client-id takeover"] = not victim.disconnected.is_set()
    r = f"br{n}"
    r_tls = bt.identity(r)
    open_session = bt.probe(r_tls, r).connect()
    bt.revoke(r, r_tls)
    deadline = time.monotonic() + 15
    refused = False
    while time.monotonic() < deadline and not refused:
        refused = open_session.disconnected.is_set() or not open_session.publish(
            f"devices/{r}/telemetry", b"x"
        )
    results["revoked, open session"] = refused
    results["revoked, reconnect"] = not bt.probe(r_tls, r).try_connect()
    rogue = bt.pki.identity(
        a, ca=FleetCA.create(Path(tempfile.mkdtemp()) / "rogue", now=time.time())
    )
    results["another CA"] = not bt.probe(
        TlsFiles(a_tls.ca_file, rogue.cert_file, rogue.key_file), a
    ).try_connect()
    results["no certificate"] = not bt.probe(None, a, ca_file=a_tls.ca_file).try_connect()
    for p in (server, victim, impostor, open_session):
        with contextlib.suppress(Exception):
            p.close()
    leaked = [name for name, ok in results.items() if not ok]
    return sum(results.values()), len(results), leaked


# ------------------------------------------------------------------- node kill --


def node_kill(cluster: LocalRabbitCluster, pki: Pki, seed: int) -> tuple[int, int, float]:
    """(sent, lost, worst reconnect seconds of the killed node's devices)."""
    from tests.cluster_fleet import cluster_link, cluster_server
    from tests.test_broker_cluster import _send

    tmp = Path(tempfile.mkdtemp(prefix=f"bench-kill-{seed}-"))
    server = cluster_server(cluster, pki, tmp / "fleet")
    server.start()
    links = [
        cluster_link(server, cluster, tmp / f"d{i}", f"k{seed}-{i}", node=i % 3) for i in range(6)
    ]
    victim = cluster.nodes[seed % 3]
    batches = 60
    try:
        for link in links:
            link.start()
        _wait(lambda: all(link.connected.is_set() for link in links), 60)
        for n in range(batches // 2):
            for link in links:
                _send(link, n)
        port = ("127.0.0.1", victim.ports.mqtts)
        moved = [(link, link.generation) for link in links if link.target == port]
        killed_at = time.monotonic()
        victim.kill_hard()
        back: dict[str, float] = {}
        for n in range(batches // 2, batches):
            for link in links:
                _send(link, n)
            time.sleep(0.05)

        def all_back() -> bool:
            for link, gen in moved:
                if link.generation > gen and link.device_id not in back:
                    back[link.device_id] = time.monotonic() - killed_at
            return len(back) == len(moved)

        _wait(all_back, 120, step=0.01)
        store = server.store

        def stored() -> int:
            return sum(len(store.query_raw(link.device_id, since=0, until=1e11)) for link in links)

        _wait(lambda: stored() == batches * len(links), 120)
        sent = batches * len(links)
        return sent, sent - stored(), max(back.values(), default=0.0)
    finally:
        for link in links:
            link.stop(timeout=2)
        server.stop()
        if not victim.alive():
            victim.start()
            cluster.wait_running(len(cluster.nodes), 240)


def _wait(pred: Callable[[], bool], timeout: float, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(step)


# ---------------------------------------------------------------------- ingest --

INGEST_DEVICES = 10


def ingest_rate(bt: BrokerUnderTest, tag: str) -> tuple[float, int, int]:
    prepared = {f"{tag}-{i:02d}": payloads(f"{tag}-{i:02d}") for i in range(INGEST_DEVICES)}
    server_tls = bt.pki.server

    def consumer(ingest: Ingest) -> Consumer:
        if bt.mode == "rabbitmq":
            return AmqpIngest(
                [("127.0.0.1", p) for p in bt.amqp_ports],  # type: ignore[attr-defined]
                server_tls,
                ingest,
            )
        endpoint = Endpoint("127.0.0.1", bt.ports[0], server_tls)
        return ServerLink(endpoint, ingest, client_id="bench-cluster-server")

    def publishers() -> Publishers:
        return Publishers(prepared, bt.identity, bt.ports, v5=bt.protocol == "5", timeout_s=120)

    rate, stored = stored_rate(prepared, consumer, publishers, connect_s=30, timeout_s=300)
    return rate, stored, sum(len(v) for v in prepared.values())


# ----------------------------------------------------------------- connections --


def connections(cluster: LocalRabbitCluster, pki: Pki) -> dict[str, Any]:
    raise_fd_limit(DEVICES * 2 + 1024)
    admin = cluster_admin(cluster)
    ids = [f"cx{i:05d}" for i in range(DEVICES)]
    t0 = time.perf_counter()
    admin.import_devices(ids)
    import_s = time.perf_counter() - t0
    store = open_store(Path(tempfile.mkdtemp()) / "fleet.db")
    insert_devices(store, ids)
    ingest = Ingest(store, batch_size=1000)
    consumer = AmqpIngest([("127.0.0.1", n.ports.amqps) for n in cluster.nodes], pki.server, ingest)
    ingest._acker = consumer.acknowledge
    ingest.start()
    consumer.start()
    _wait(consumer.connected.is_set, 30)
    ctx_of = client_contexts(pki.identity, ids)
    before = _cluster_rss(cluster)
    t0 = time.perf_counter()
    held: list[asyncio.StreamWriter] = []
    ports = [n.ports.mqtts for n in cluster.nodes]

    async def fleet() -> list[object]:
        gate = asyncio.Semaphore(60)
        return await asyncio.gather(
            *(device(i, ports, ctx_of, held, gate) for i in range(DEVICES)),
            return_exceptions=True,
        )

    loop = asyncio.new_event_loop()
    results = loop.run_until_complete(fleet())
    connect_s = time.perf_counter() - t0
    errors = [r for r in results if isinstance(r, BaseException)]
    _wait(lambda: store.count_online() >= len(held), 300, step=0.5)
    online = store.count_online()
    rss = _cluster_rss(cluster)
    mem_used = admin.health()["memory_bytes"]
    for w in held:
        w.close()
    loop.close()
    consumer.stop()
    ingest.stop()
    store.close()
    return {
        "held": len(held),
        "errors": len(errors),
        "first_error": repr(errors[0]) if errors else "",
        "connect_s": connect_s,
        "online": online,
        "rss_mib": rss,
        "idle_rss_mib": before,
        "mem_used_mib": int(mem_used) / 2**20,
        "import_s": import_s,
    }


def _cluster_rss(cluster: LocalRabbitCluster) -> float:
    total = 0
    for node in cluster.nodes:
        if node.proc is None:
            continue
        try:
            root = psutil.Process(node.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


# -------------------------------------------------------------------------- run --


def run() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    pki = Pki(tmp / "pki")
    mosquitto = start_broker(pki, tmp / "mosquitto")
    cluster = LocalRabbitCluster(tmp / "rabbit", pki.ca)
    cluster.start()
    try:
        cl = rabbitmq_mode(cluster, pki)
        cl.amqp_ports = [n.ports.amqps for n in cluster.nodes]  # type: ignore[attr-defined]
        mq = mosquitto_mode(mosquitto, pki)
        if "acl" in PARTS:
            rows += _acl_rows(cl, mq)
        if "ingest" in PARTS:
            rows += _ingest_rows(cl, mq)
        if "kill" in PARTS:
            rows += _kill_rows(cluster, pki)
        if "connections" in PARTS:
            rows += _connection_rows(cluster, pki)
    finally:
        cluster.stop()
        mosquitto.stop()
    return rows


def _acl_rows(cl: BrokerUnderTest, mq: BrokerUnderTest) -> list[dict[str, object]]:
    rows = []
    for label, bt in (
        ("ACL probes refused, clustered broker (share)", cl),
        ("ACL probes refused, managed mosquitto (share)", mq),
    ):
        refused, tried, leaked = acl_probes(bt)
        rows.append(
            {
                "benchmark": label,
                "value": f"{refused / tried:.3f}",
                "baseline": "1.0 (goal)",
                "ratio": f"{refused}/{tried}",
                "note": "got through: " + (", ".join(leaked) or "none"),
            }
        )
    return rows


def _ingest_rows(cl: BrokerUnderTest, mq: BrokerUnderTest) -> list[dict[str, object]]:
    cluster_rates, single_rates = [], []
    for seed in range(SEEDS):
        single_rates.append(ingest_rate(mq, f"im{seed}")[0])
        cluster_rates.append(ingest_rate(cl, f"ic{seed}")[0])
    ratios = [c / s for c, s in zip(cluster_rates, single_rates, strict=True)]
    return [
        {
            "benchmark": "ingest readings/s through the broker cluster",
            "value": f"{statistics.mean(cluster_rates):,.0f}",
            "baseline": f"{statistics.mean(single_rates):,.0f} (single mosquitto)",
            "ratio": f"{statistics.mean(ratios):.2f} (worst {min(ratios):.2f})",
            "note": f"{SEEDS} runs, {INGEST_DEVICES} devices x 250 batches x 10 readings, QoS 1, "
            "quorum queue -> AMQP -> SQLite vs MQTT -> SQLite",
        }
    ]


def _kill_rows(cluster: LocalRabbitCluster, pki: Pki) -> list[dict[str, object]]:
    runs = [node_kill(cluster, pki, seed) for seed in range(SEEDS)]
    lost = [r[1] for r in runs]
    back = [r[2] for r in runs]
    return [
        {
            "benchmark": "batches lost when a broker node is killed",
            "value": str(max(lost)),
            "baseline": "0 (goal)",
            "ratio": "-",
            "note": f"worst of {SEEDS} kills; {sum(r[0] for r in runs)} batches sent, "
            f"{sum(lost)} lost in all",
        },
        {
            "benchmark": "reconnect time of a killed node's devices",
            "value": f"{max(back):.1f} s",
            "baseline": "-",
            "ratio": "-",
            "note": f"worst; mean {statistics.mean(back):.1f} s over {SEEDS} kills "
            "(jittered backoff from 0.5 s, next node)",
        },
    ]


def _connection_rows(cluster: LocalRabbitCluster, pki: Pki) -> list[dict[str, object]]:
    r = connections(cluster, pki)
    return [
        {
            "benchmark": "devices connected through the broker cluster",
            "value": f"{r['held']:,}",
            "baseline": "10,000 (goal)",
            "ratio": f"{int(r['held']) / 10000:.2f}",
            "note": f"mTLS over 3 nodes in {r['connect_s']:.0f}s, {r['online']:,} online in the "
            f"store via the quorum queue; {r['errors']} refused {r['first_error']}",
        },
        {
            "benchmark": "broker cluster memory at that many devices",
            "value": f"{r['rss_mib']:.0f} MiB",
            "baseline": f"{MOSQUITTO_10K_MIB} MiB (mosquitto, 10,000)",
            "ratio": f"{float(r['rss_mib']) / MOSQUITTO_10K_MIB:.1f}",
            "note": f"3 nodes' RSS (idle {r['idle_rss_mib']:.0f} MiB); broker-reported "
            f"{r['mem_used_mib']:.0f} MiB; {DEVICES:,} users imported in {r['import_s']:.1f}s",
        },
    ]
