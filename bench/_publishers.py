"""Publishing devices for the ingest benches, in a process of their own.

Devices are other machines: a publisher thread in the process under test takes its
interpreter lock and its core away from the ingest, which the bare subscriber it is
compared with barely needs, so sharing a process skews the ratio against the ingest
(the profile of the PostgreSQL ingest showed its thread waiting on the 20 publisher
threads).  Here every device is a thread of one child process, as before, but the
child is not the process measured.  It connects every device first and publishes only
on :meth:`Publishers.go`, so the child's start-up, the certificates and the TLS
handshakes stay outside any timed interval on both sides of a ratio.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Callable, Sequence
from multiprocessing.synchronize import Event
from types import TracebackType

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edgefleet_common.mqtt import TlsFiles, tls_context

_CONNECT_S = 120


def _device(
    i: int,
    device_id: str,
    data: list[bytes],
    tls: TlsFiles,
    ports: Sequence[int],
    v5: bool,
    connected: threading.Barrier,
    go: Event,
    timeout_s: float,
) -> None:
    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=device_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
    )
    c.tls_set_context(tls_context(tls))
    c.max_inflight_messages_set(100)
    c.connect("127.0.0.1", ports[i % len(ports)])
    c.loop_start()
    connected.wait(_CONNECT_S)
    go.wait(_CONNECT_S)
    infos = [c.publish(f"devices/{device_id}/telemetry", p, qos=1) for p in data]
    for info in infos:
        info.wait_for_publish(timeout_s)
    c.disconnect()
    c.loop_stop()


def _child(
    prepared: dict[str, list[bytes]],
    identities: dict[str, TlsFiles],
    ports: list[int],
    v5: bool,
    timeout_s: float,
    ready: Event,
    go: Event,
) -> None:
    connected = threading.Barrier(len(prepared) + 1)
    threads = [
        threading.Thread(
            target=_device,
            args=(i, d, data, identities[d], ports, v5, connected, go, timeout_s),
        )
        for i, (d, data) in enumerate(prepared.items())
    ]
    for t in threads:
        t.start()
    connected.wait(_CONNECT_S)
    ready.set()
    for t in threads:
        t.join()


class Publishers:
    """``with Publishers(...) as p: start_clock(); p.go()``: each device publishes its
    batches at QoS 1 as fast as paho allows (the i-th device to ``ports[i % len(ports)]``),
    from a child process; the block's end waits for the child."""

    def __init__(
        self,
        prepared: dict[str, list[bytes]],
        identity: Callable[[str], TlsFiles],
        ports: Sequence[int],
        *,
        v5: bool = True,
        timeout_s: float = 60,
    ) -> None:
        ctx = mp.get_context("spawn")
        self._ready = ctx.Event()
        self._go = ctx.Event()
        identities = {d: identity(d) for d in prepared}
        self._proc = ctx.Process(
            target=_child,
            args=(prepared, identities, list(ports), v5, timeout_s, self._ready, self._go),
            daemon=True,
        )
        self._timeout_s = timeout_s

    def __enter__(self) -> Publishers:
        self._proc.start()
        if not self._ready.wait(_CONNECT_S + 30):
            self._proc.kill()
            raise RuntimeError("the publishing devices did not connect")
        return self

    def go(self) -> None:
        self._go.set()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._go.set()
        self._proc.join(self._timeout_s + 60)
        if self._proc.is_alive():
            self._proc.kill()
