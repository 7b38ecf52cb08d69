"""A spooled batch that no subscription matched is kept and sent again, not acked away.

After a restart mosquitto restores the server's persistent session but not its
shared (``$share/ingest/...``) subscriptions, so devices that reconnect before
the server resubscribes publish into nothing.  With MQTT 5 the broker says so
("No matching subscribers"); the agent must keep those batches.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.link import DeviceLink
from agent.spool import DrainPolicy, Spool
from edgefleet_common.backoff import Backoff
from edgefleet_common.mqtt import Endpoint
from edgefleet_contract.codec import Codec
from edgefleet_contract.messages import Telemetry
from edgefleet_contract.topics import Channel

from .harness import Client, Pki, start_broker, wait_for

BATCHES = 3


def test_batches_nobody_heard_stay_spooled_until_ingest_subscribes(
    pki: Pki, tmp_path: Path
) -> None:
    broker = start_broker(pki, tmp_path / "broker")  # its own: no other test's subscriptions
    spool = Spool(tmp_path / "spool.db", max_bytes=10**6, max_age_s=1e6)
    endpoint = Endpoint("127.0.0.1", broker.port, pki.identity("uh-1"))
    link = DeviceLink("uh-1", endpoint, spool, agent_version="t", policy=DrainPolicy(50, 50, 5))
    link._unheard = Backoff(initial=0.05, maximum=0.2)
    for n in range(BATCHES):
        batch = Telemetry(device_id="uh-1", batch_id=f"b{n}", seq=n, ts=time.time(), window_s=1)
        link.send(Channel.TELEMETRY, Codec().encode(batch))
    server = Client(pki.server, "fleet.server")
    link.start()
    try:
        wait_for(lambda: link._unheard.attempts >= 2, what="PUBACKs saying nobody heard them")
        assert spool.stats().depth == BATCHES

        server.connect(broker.port)
        server.client.subscribe("$share/ingest/devices/+/telemetry", qos=1)
        wait_for(lambda: spool.stats().depth == 0, what="the spool drained once ingest listens")
        got = {Codec().decode_as(Telemetry, p).batch_id for _, p in server.messages}  # type: ignore[union-attr]
        assert got == {f"b{n}" for n in range(BATCHES)}
    finally:
        link.stop()
        server.close()
        broker.stop()
