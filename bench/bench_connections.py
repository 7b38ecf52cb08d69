"""10,000 devices connected at once: the broker holds the mTLS connections and the
server ingests every device's retained online status into the store.

Devices are minimal asyncio MQTT 3.1.1 clients (one socket each, no thread), so
one process can play the whole fleet.  The file-descriptor limit is raised the
way an operator must (``ulimit -n`` / systemd ``LimitNOFILE``) before the
broker starts, since mosquitto inherits it."""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
import tempfile
import time
from pathlib import Path

import psutil

from edgefleet_common.mqtt import Endpoint
from fleet_server.ingest import Ingest
from fleet_server.link import ServerLink
from fleet_server.store import open_store

from ._lab import Lab, client_contexts, insert_devices, raise_fd_limit

DEVICES = int(os.environ.get("BENCH_DEVICES", "10000"))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id: str) -> bytes:
    body = _str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 600) + _str(client_id)
    return bytes([0x10]) + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    body = _str(topic) + struct.pack("!H", packet_id) + payload
    return bytes([0x33]) + _varint(len(body)) + body  # QoS 1, retained


async def device(
    i: int,
    ports: list[int],
    contexts: list[tuple[str, ssl.SSLContext]],
    held: list[asyncio.StreamWriter],
    gate: asyncio.Semaphore,
) -> None:
    """Device ``i`` connects (to the ports in turn: a cluster's nodes), says it is online, stays."""
    cn, ctx = contexts[i % len(contexts)]
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[i % len(ports)], ssl=ctx)
        writer.write(connect_packet(cn))
        connack = await reader.readexactly(4)
        if connack[3] != 0:
            raise RuntimeError(f"CONNACK refused: {connack!r}")
        status = b'{"v":1,"device_id":"%s","online":true,"reason":"connected"}' % cn.encode()
        writer.write(publish_packet(f"devices/{cn}/status", status, 1))
        await reader.readexactly(4)  # PUBACK
    held.append(writer)


async def fleet(
    port: int, contexts: list[tuple[str, ssl.SSLContext]]
) -> list[asyncio.StreamWriter]:
    held: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(100)
    await asyncio.gather(*(device(i, [port], contexts, held, gate) for i in range(len(contexts))))
    return held


def run() -> list[dict[str, object]]:
    raise_fd_limit(DEVICES * 2 + 1024)
    lab = Lab()
    store = open_store(Path(tempfile.mkdtemp()) / "fleet.db")
    try:
        ids = [f"conn-{i:05d}" for i in range(DEVICES)]
        insert_devices(store, ids)
        ingest = Ingest(store, batch_size=1000)
        link = ServerLink(
            Endpoint("127.0.0.1", lab.broker.port, lab.server),
            ingest,
            client_id="bench-conn-server",
        )
        ingest._acker = link.acknowledge
        ingest.start()
        link.start()
        link.wait_connected(10)
        contexts = client_contexts(lab.identity, ids)
        t0 = time.perf_counter()
        loop = asyncio.new_event_loop()
        held = loop.run_until_complete(fleet(lab.broker.port, contexts))
        connect_s = time.perf_counter() - t0
        deadline = time.monotonic() + 300
        online = 0
        while time.monotonic() < deadline:
            online = store.count_online()
            if online >= DEVICES:
                break
            time.sleep(0.5)
        ingest_s = time.perf_counter() - t0
        broker_rss = psutil.Process(lab.broker.pid or 0).memory_info().rss / 2**20
        broker_fds = psutil.Process(lab.broker.pid or 0).num_fds()
        for w in held:
            w.close()
        loop.close()
        link.stop()
        ingest.stop()
    finally:
        store.close()
        lab.close()
    return [
        {
            "benchmark": "devices connected (mTLS, held open)",
            "value": f"{len(held):,}",
            "note": f"all connected in {connect_s:.1f}s ({len(held) / connect_s:,.0f}/s)",
        },
        {
            "benchmark": "devices online in the store (via retained status)",
            "value": f"{online:,}",
            "note": f"{ingest_s:.1f}s after the first connect",
        },
        {
            "benchmark": "broker resident memory",
            "value": f"{broker_rss:.0f} MiB",
            "note": f"{broker_fds:,} open file descriptors",
        },
    ]
