"""50 devices with the real agent link and spool, through mTLS, into the real store —
and a server restart in the middle that must lose nothing."""

from __future__ import annotations

import time
from pathlib import Path

from agent.link import DeviceLink
from edgefleet_contract.codec import Codec
from edgefleet_contract.messages import ReportedState, Telemetry
from edgefleet_contract.topics import Channel
from fleet_server.config import DatabaseSettings, ServerSettings
from fleet_server.selector import parse as parse_selector
from fleet_server.server import FleetServer, initialize

from .harness import ADMIN_PASSWORD, fleet_link, server_settings, wait_for, wait_ports_free

DEVICES = 50
BATCHES = 6


def device_link(server: FleetServer, tmp: Path, device_id: str) -> DeviceLink:
    server.store.create_device(device_id, name=device_id, tags={"fleet": "it"}, now=time.time())
    return fleet_link(server, tmp / device_id, device_id)


def send(link: DeviceLink, n: int) -> None:
    batch = Telemetry(
        device_id=link.device_id, batch_id=f"b{n:03d}", seq=n, ts=time.time(), window_s=1
    )
    link.send(Channel.TELEMETRY, Codec().encode(batch))


def test_fifty_devices_and_a_server_restart_lose_nothing(tmp_path: Path, store_url: str) -> None:
    settings = server_settings(tmp_path / "fleet")
    assert isinstance(settings, ServerSettings)
    settings = settings.model_copy(update={"database": DatabaseSettings(url=store_url)})
    initialize(settings, admin_password=ADMIN_PASSWORD)
    server = FleetServer(settings)
    server.start()
    links: list[DeviceLink] = []
    try:
        links = [device_link(server, tmp_path / "devs", f"it-{i:02d}") for i in range(DEVICES)]
        for link in links:
            link.start()
            link.report(
                ReportedState(
                    device_id=link.device_id, ts=time.time(), agent_version="9.9.9", health="ok"
                )
            )
        wait_for(lambda: all(link.connected.is_set() for link in links), what="all connected")
        for n in range(BATCHES // 2):
            for link in links:
                send(link, n)
        store = server.store
        wait_for(
            lambda: store.list_devices(where=parse_selector("online"), limit=1000).total == DEVICES,
            what="all online",
        )

        server.stop()  # the broker goes too: devices keep producing into their spools
        for n in range(BATCHES // 2, BATCHES):
            for link in links:
                send(link, n)
        wait_ports_free(settings.api.port, settings.broker.port)
        server = FleetServer(settings)
        server.start()
        store = server.store

        def stored() -> int:
            return sum(len(store.query_raw(link.device_id, since=0, until=1e11)) for link in links)

        # generous: the devices reconnect with a jittered backoff, and CI measures coverage
        wait_for(lambda: stored() == DEVICES * BATCHES, timeout=200, what="every batch stored")
        for link in links:
            ids = [b.batch_id for b in store.query_raw(link.device_id, since=0, until=1e11)]
            assert ids == [f"b{n:03d}" for n in range(BATCHES)], (link.device_id, ids)
        wait_for(lambda: all(link.spool.stats().depth == 0 for link in links), what="spools empty")
        twins = store.list_devices(where=parse_selector("agent:=9.9.9"), limit=1000)
        assert twins.total == DEVICES
    finally:
        for link in links:
            link.stop(timeout=2)
        server.stop()
