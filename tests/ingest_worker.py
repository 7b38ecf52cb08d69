"""One ingest worker process (for the kill -9 tests and the two-worker ingest bench).

    python -m tests.ingest_worker STORE PORT CA CERT KEY IDENTITY [BATCH_SIZE]

Joins the shared ingest subscription as ``IDENTITY`` (a ``fleet.server.<name>``
certificate), writes to ``STORE`` and prints ``subscribed`` once the broker
granted the subscription, then ``stored <n>`` whenever its count of newly stored
telemetry batches changed, until killed.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from edgefleet_common.mqtt import Endpoint, TlsFiles
from fleet_server.ingest import Ingest
from fleet_server.link import ServerLink
from fleet_server.roles import PARTS, subscriptions
from fleet_server.store import open_store


def main() -> None:
    store_at, port, ca, cert, key, identity = sys.argv[1:7]
    batch_size = int(sys.argv[7]) if len(sys.argv) > 7 else 50
    store = open_store(store_at)
    holder: list[ServerLink] = []
    ingest = Ingest(store, acker=lambda item: holder[0].acknowledge(item), batch_size=batch_size)
    tls = TlsFiles(Path(ca), Path(cert), Path(key))
    link = ServerLink(
        Endpoint("127.0.0.1", int(port), tls),
        ingest,
        client_id=identity,
        subscriptions=subscriptions(PARTS["ingest"], shared=True),
    )
    holder.append(link)
    ingest.start()
    link.start()
    if not link.subscribed.wait(60):
        print(f"not subscribed: {link.last_error}", flush=True)
        sys.exit(1)
    print("subscribed", flush=True)
    last = -1.0
    forever = threading.Event()
    while not forever.wait(0.1):
        stored = ingest.metrics.value("edgefleet_ingest_telemetry_batches_total")
        if stored != last:
            print(f"stored {stored:.0f}", flush=True)
            last = stored


if __name__ == "__main__":
    main()
