"""Ingest on PostgreSQL with one and with two ingest worker processes sharing the stream
(MQTT 5 shared subscription ``$share/ingest/devices/+/telemetry``, the processes
``fleet-server run --role ingest`` runs), as a ratio to a bare paho subscriber on the
same publishers in the same round.  ``bench_ingest``'s publishers and payloads; timed
from the signal to publish to the last commit of either worker (the workers are started
and subscribed before).  Three rounds: mean and worst.  Everything -- broker,
publishers, PostgreSQL and the workers -- shares the same 2 cores, so a second worker
can only help as far as a core is idle (more cores, or workers on other hosts, are
where it pays).  Each worker's persistent session is
ended after its run: an offline member of a shared group keeps receiving its share.
Each round's note ends with the machine's 1-minute load average at its end.  The
publishers are a process of their own (as devices are), so neither the bare subscriber
nor a worker shares an interpreter with them; before, the bare subscriber did and the
workers did not, which flattered the workers (1.01 with two)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet_common.mqtt import tls_context
from fleet_server.config import SERVER_IDENTITY
from fleet_server.store import open_store

from ._lab import Lab
from ._publishers import Publishers
from .bench_ingest import DEVICES, READINGS, bare_rate, fleet_payloads, fresh

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 3
NAMES = [f"{SERVER_IDENTITY}.bench-ingest-{i}" for i in range(2)]


def drop_session(lab: Lab, identity: str) -> None:
    """End a worker's persistent session: an offline member of the shared group would
    otherwise go on receiving its share of every later run's messages."""
    c = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=identity, protocol=MQTTProtocolVersion.MQTTv5
    )
    c.tls_set_context(tls_context(lab.identity(identity)))
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    c.connect("127.0.0.1", lab.broker.port, clean_start=True, properties=props)
    c.loop_start()
    time.sleep(0.3)
    c.disconnect()
    c.loop_stop()


class Worker:
    def __init__(self, lab: Lab, dsn: str, identity: str) -> None:
        self.identity = identity
        tls = lab.identity(identity)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ingest_worker", dsn, str(lab.broker.port),
             str(tls.ca_file), str(tls.cert_file), str(tls.key_file), identity, "500"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.stored = 0
        self.subscribed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("subscribed"):
                self.subscribed.set()
            elif line.startswith("stored "):
                self.stored = int(line.split()[1])

    def end(self, lab: Lab) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        drop_session(lab, self.identity)


def workers_rate(lab: Lab, prepared: dict[str, list[bytes]], dsn: str, n: int) -> tuple[float, int]:
    store = open_store(dsn)
    for device_id in prepared:
        store.create_device(device_id, name=device_id, tags={}, now=0)
    store.close()
    total = sum(len(v) for v in prepared.values())
    workers = [Worker(lab, dsn, name) for name in NAMES[:n]]
    try:
        for w in workers:
            if not w.subscribed.wait(120):
                raise RuntimeError("an ingest worker did not subscribe")
        with Publishers(prepared, lab.identity, [lab.broker.port]) as pubs:
            start = time.perf_counter()
            pubs.go()
            deadline = time.monotonic() + 180
            while sum(w.stored for w in workers) < total and time.monotonic() < deadline:
                time.sleep(0.01)
            elapsed = time.perf_counter() - start
        stored = sum(w.stored for w in workers)
        if stored > total:
            raise RuntimeError(f"stored {stored} batches of {total}: a stale session leaked in")
    finally:
        for w in workers:
            w.end(lab)
    return stored * READINGS / elapsed, stored


def run() -> list[dict[str, object]]:
    from tests.pgserver import PgServer

    lab = Lab(servers=NAMES)
    pg = PgServer().start()
    ratios: dict[int, list[float]] = {1: [], 2: []}
    notes: list[str] = []
    try:
        base = fleet_payloads()
        sent = sum(len(v) for v in base.values())
        for r in range(ROUNDS):
            bare, _ = bare_rate(lab, fresh(base, f"bare{r}"))
            parts = [f"bare {bare:,.0f}"]
            for n in (1, 2):
                with pg.database() as dsn:
                    rate, stored = workers_rate(lab, fresh(base, f"w{n}r{r}"), dsn, n)
                ratios[n].append(rate / bare)
                parts.append(f"{n} worker(s) {rate:,.0f} ({stored}/{sent})")
            notes.append(", ".join([*parts, f"load {os.getloadavg()[0]:.1f}"]))
    finally:
        pg.destroy()
        lab.close()
    return [
        {
            "benchmark": f"ingest readings/s with {n} ingest worker "
            f"process{'es' if n > 1 else ''} (shared subscription), PostgreSQL / bare paho",
            "ratio (mean)": f"{statistics.mean(ratios[n]):.2f}",
            "worst": f"{min(ratios[n]):.2f}",
            "note": f"{ROUNDS} rounds, QoS 1, {DEVICES} devices x {READINGS} readings"
            + (f"; readings/s per round: {'; '.join(notes)}" if n == 2 else ""),
        }
        for n in (1, 2)
    ]
