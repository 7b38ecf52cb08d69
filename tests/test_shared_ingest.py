"""Two ingest workers on one MQTT 5 shared subscription: each batch is stored exactly once,
also when one of them is killed with SIGKILL in the middle of the stream.

Real mosquitto (mTLS, ACL listing both replica identities), real worker processes
(``tests/ingest_worker.py``), one store both write to.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet_contract import topics
from edgefleet_contract.codec import Codec
from edgefleet_contract.messages import Telemetry
from edgefleet_contract.topics import Channel
from fleet_server.broker import BrokerLayout, ManagedBroker
from fleet_server.pki import write_private
from fleet_server.roles import PARTS, SHARE_GROUP, subscriptions
from fleet_server.store import open_store

from .harness import Client, Pki, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ("fleet.server.ingest-a", "fleet.server.ingest-b")
DEVICES = ("shr-1", "shr-2")
TIMEOUT_S = 120.0


@pytest.fixture
def replica_broker(pki: Pki, tmp_path: Path) -> Iterator[ManagedBroker]:
    layout = BrokerLayout(tmp_path / "broker")
    layout.directory.mkdir(parents=True)
    cert, key = pki.ca.issue_server_cert(["localhost"], ["127.0.0.1"], now=time.time())
    layout.cert.write_bytes(cert)
    write_private(layout.key, key)
    broker = ManagedBroker(
        layout, ca_file=pki.ca.cert_file, bind="127.0.0.1", port=free_port(), servers=WORKERS
    )
    broker.configure(crl_pem=pki.ca.crl_pem([], now=time.time()))
    broker.start()
    yield broker
    broker.stop()


class Worker:
    """An ingest worker process and the lines it printed."""

    def __init__(self, store: Path, port: int, pki: Pki, identity: str) -> None:
        tls = pki.identity(identity)
        self.identity = identity
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ingest_worker", str(store), str(port),
             str(tls.ca_file), str(tls.cert_file), str(tls.key_file), identity],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.stored = 0
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.startswith("stored "):
                self.stored = int(line.split()[1])

    def wait_subscribed(self) -> None:
        wait_for(lambda: "subscribed" in self.lines or self.proc.poll() is not None,
                 TIMEOUT_S, f"{self.identity} to subscribe")  # fmt: skip
        assert "subscribed" in self.lines, self.lines

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def telemetry(device: str, n: int) -> bytes:
    return Codec().encode(
        Telemetry(device_id=device, batch_id=f"b-{n}", seq=n, ts=time.time(), window_s=1)
    )


def stored_batches(store_at: Path) -> dict[str, list[str]]:
    store = open_store(store_at)
    try:
        return {
            d: sorted(t.batch_id for t in store.recent_raw(d, since=0, limit=100_000))
            for d in DEVICES
        }
    finally:
        store.close()


def test_the_ingest_filters_are_shared_and_fl_frames_are_not() -> None:
    shared = subscriptions(PARTS["ingest"], shared=True)
    assert f"$share/{SHARE_GROUP}/devices/+/telemetry" in shared
    assert not any("fl/out" in f for f in shared)  # frames go to the training holder
    assert subscriptions(PARTS["worker"], shared=True) == ["devices/+/fl/out"]
    # one process alone (role all on SQLite) subscribes plainly, as before
    assert sorted(subscriptions(PARTS["all"], shared=False)) == sorted(
        topics.subscription(c) for c in topics.UPSTREAM
    )


def test_kill_9_of_one_of_two_ingest_workers_loses_and_doubles_nothing(
    replica_broker: ManagedBroker, pki: Pki, tmp_path: Path
) -> None:
    store_at = tmp_path / "fleet.db"
    store = open_store(store_at)
    for d in DEVICES:
        store.create_device(d, name=d, tags={}, now=time.time())
    store.close()
    workers = [Worker(store_at, replica_broker.port, pki, w) for w in WORKERS]
    devices: list[Client] = []
    try:
        for w in workers:
            w.wait_subscribed()
        for d in DEVICES:
            c = Client(pki.identity(d), d)
            c.connect(replica_broker.port)
            devices.append(c)
        total = 400
        half = total // 2
        for n in range(total):
            if n == half:
                # Mid-stream: both have stored some (so both really took part), then one dies.
                wait_for(
                    lambda: all(w.stored > 0 for w in workers), TIMEOUT_S, "both workers to store"
                )
                os.kill(workers[0].proc.pid, signal.SIGKILL)
                workers[0].proc.wait(30)
            for c, d in zip(devices, DEVICES, strict=True):
                c.client.publish(topics.topic(d, Channel.TELEMETRY), telemetry(d, n), qos=1)
        expected = sorted(f"b-{n}" for n in range(total))

        def complete() -> bool:
            got = stored_batches(store_at)
            return all(got[d] == expected for d in DEVICES)

        # The dead worker's unacknowledged messages wait in its persistent session; the
        # supervisor (systemd, compose) restarts it and the broker delivers them then.
        survivor_only = workers[1].stored
        workers.append(Worker(store_at, replica_broker.port, pki, WORKERS[0]))
        workers[2].wait_subscribed()
        wait_for(complete, TIMEOUT_S, "every batch of both devices to be stored")
        assert survivor_only > 0
        got = stored_batches(store_at)
        assert {d: len(got[d]) for d in DEVICES} == {d: total for d in DEVICES}
    finally:
        for c in devices:
            c.close()
        for w in workers:
            w.end()
