"""``fleet-server broker-config``: the files of a mosquitto that runs beside the server.

With several replicas the broker is its own service (compose.yaml's ``broker``); it
is configured exactly like the managed one -- mTLS from the fleet CA, certificate
name as username and client id, the ACL (every ``broker.replicas`` identity sees the
fleet, a device only its own subtree, revoked devices nothing) and the CRL -- from
the same code, written into the data dir's ``broker/``.  The broker reads them
from the shared volume; after a revocation the server rewrites the CRL there and
the broker must be sent SIGHUP (docs/operations.md, "Several replicas").
"""

from __future__ import annotations

import time
from pathlib import Path

from .broker import BrokerLayout, ManagedBroker
from .config import SERVER_IDENTITY, ServerSettings
from .pki import FleetCA
from .selector import parse as parse_selector
from .store import open_store


def write_broker_files(settings: ServerSettings) -> Path:
    """Write ``mosquitto.conf``, ACL and CRL; returns the config file to start mosquitto with."""
    ca = FleetCA.load(settings.data_dir / "ca")
    broker = ManagedBroker(
        BrokerLayout(settings.data_dir / "broker"),
        ca_file=ca.cert_file,
        bind=settings.broker.bind,
        port=settings.broker.port,
        mosquitto_bin=settings.broker.mosquitto_bin,
        max_connections=settings.broker.max_connections,
        servers=[f"{SERVER_IDENTITY}.{r}" for r in settings.broker.replicas],
    )
    store = open_store(settings.database_url)
    try:
        gone = parse_selector("state:revoked or state:decommissioned")
        revoked = [d.id for d in store.all_devices(where=gone)]
        crl = ca.crl_pem(store.revoked_serials(), now=time.time())
    finally:
        store.close()
    broker.configure(crl_pem=crl, revoked=revoked)
    return broker.layout.conf
