"""What the server needs from its broker, behind one interface, for each broker mode.

The server makes a device's identity and topic rights effective when it is added,
withdraws them when it is revoked (the CRL and, where the engine has them, users),
asks for health, and gets the endpoints and the consumer its own sessions use.
Three implementations, picked by ``broker.mode`` in fleet.toml:

* ``managed`` (:class:`MosquittoControl`): the server runs mosquitto; the ACL pattern
  ``devices/%u/#`` needs nothing per device, revocation rewrites ACL and CRL and
  reloads (SIGHUP).
* ``external`` (:class:`ExternalControl`): any MQTT broker configured by hand from
  docs/operations.md; the server only writes the CRL for the operator to install.
* ``rabbitmq`` (:class:`RabbitControl`): a RabbitMQ cluster; per-device users and
  rights through its management API, ingest from a replicated quorum queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from edgefleet_common.mqtt import Endpoint, TlsFiles
from edgefleet_contract.errors import ConfigError

from .amqp_ingest import AmqpIngest
from .broker import BrokerLayout, ManagedBroker
from .config import BrokerSettings, host_port
from .ingest import Ingest
from .preflight import check_port
from .rabbitmq import PresenceSweep, RabbitAdmin, sync_users
from .selector import parse as parse_selector
from .store.base import DeviceStore

log = logging.getLogger(__name__)


PresenceStore = DeviceStore
"""What a presence sweep needs of the store: the devices and their presence."""


_ONLINE = parse_selector("online")


class Upstream(Protocol):
    """An engine-native consumer of device messages (acknowledged after commit)."""

    connected: object

    def start(self) -> None: ...
    def stop(self, timeout: float = 10.0) -> None: ...
    def acknowledge(self, item: object) -> None: ...


class BrokerControl(Protocol):
    mode: str
    managed: ManagedBroker | None
    """The supervised mosquitto in managed mode (tests kill it), else None."""

    def check_ports(self) -> None: ...
    def start(self, *, crl_pem: bytes, active: list[str], revoked: list[str]) -> None: ...
    def admit(self, device_id: str) -> None: ...
    def revoke(self, *, crl_pem: bytes, revoked: list[str]) -> None: ...
    def health(self) -> dict[str, object]: ...
    def server_endpoint(self, client: TlsFiles) -> Endpoint: ...
    def upstream(self, ingest: Ingest, client: TlsFiles) -> AmqpIngest | None: ...
    def track_presence(self, store: PresenceStore, interval_s: float) -> None: ...
    def stop(self) -> None: ...
    @property
    def restarts(self) -> int: ...


class MosquittoControl:
    """The managed mosquitto (today's behaviour)."""

    mode = "managed"

    def __init__(
        self,
        settings: BrokerSettings,
        layout: BrokerLayout,
        ca_file: Path,
        on_give_up: Callable[[str], None] | None = None,
        servers: Sequence[str] = (),
    ) -> None:
        self._settings = settings
        self._ca_file = ca_file
        self.managed: ManagedBroker | None = ManagedBroker(
            layout,
            ca_file=ca_file,
            bind=settings.bind,
            port=settings.port,
            mosquitto_bin=settings.mosquitto_bin,
            max_connections=settings.max_connections,
            on_give_up=on_give_up,
            servers=list(servers),
        )

    @property
    def broker(self) -> ManagedBroker:
        assert self.managed is not None
        return self.managed

    def check_ports(self) -> None:
        b = self._settings
        self.broker.end_stale()  # a broker a killed server left on this data dir
        check_port(b.bind, b.port, setting="broker.port", env="FLEET_BROKER__PORT", what="broker")

    def start(self, *, crl_pem: bytes, active: list[str], revoked: list[str]) -> None:
        self.broker.configure(crl_pem=crl_pem, revoked=revoked)
        self.broker.start()

    def admit(self, device_id: str) -> None:
        """Nothing per device: the ACL pattern covers every certificate the CA signs."""

    def revoke(self, *, crl_pem: bytes, revoked: list[str]) -> None:
        # mosquitto re-reads CRL and ACL on SIGHUP: a revoked device still connected is
        # denied everything from then on, and a reconnect fails the TLS handshake.
        self.broker.configure(crl_pem=crl_pem, revoked=revoked)
        self.broker.reload()

    def health(self) -> dict[str, object]:
        return {"mode": self.mode, "up": self.broker.wait_ready(0.5), "restarts": self.restarts}

    def server_endpoint(self, client: TlsFiles) -> Endpoint:
        return Endpoint("127.0.0.1", self._settings.port, client, protocol=self._settings.protocol)

    def upstream(self, ingest: Ingest, client: TlsFiles) -> AmqpIngest | None:
        return None

    def track_presence(self, store: PresenceStore, interval_s: float) -> None:
        """Last Wills and retained status tell the server; nothing to poll."""

    def stop(self) -> None:
        self.broker.stop()

    @property
    def restarts(self) -> int:
        return self.broker.restarts


class ExternalControl:
    """A broker run and configured by the operator (docs/operations.md)."""

    mode = "external"
    managed: ManagedBroker | None = None

    def __init__(self, settings: BrokerSettings, layout: BrokerLayout) -> None:
        self._settings = settings
        self._layout = layout

    def check_ports(self) -> None:
        """The broker's ports are the operator's."""

    def start(self, *, crl_pem: bytes, active: list[str], revoked: list[str]) -> None:
        self._write_crl(crl_pem)

    def admit(self, device_id: str) -> None:
        """The operator's ACL must follow the CN pattern; nothing to do per device."""

    def revoke(self, *, crl_pem: bytes, revoked: list[str]) -> None:
        log.warning(
            "external broker: install the new CRL there yourself (%s) and deny %d revoked "
            "device(s)",
            self._layout.crl,
            len(revoked),
        )
        self._write_crl(crl_pem)

    def _write_crl(self, crl_pem: bytes) -> None:
        self._layout.directory.mkdir(parents=True, exist_ok=True)
        self._layout.crl.write_bytes(crl_pem)

    def health(self) -> dict[str, object]:
        return {"mode": self.mode}

    def server_endpoint(self, client: TlsFiles) -> Endpoint:
        b = self._settings
        if b.tls and b.ca_file is None:
            raise ConfigError("broker.ca_file is required for a TLS external broker")
        tls = (
            TlsFiles(b.ca_file, client.cert_file, client.key_file) if b.tls and b.ca_file else None
        )
        return Endpoint(
            b.host,
            b.port,
            tls,
            protocol=b.protocol,
            username=b.username,
            password=b.password.get_secret_value() if b.password else None,
            alternates=tuple(host_port(e) for e in b.endpoints),
        )

    def upstream(self, ingest: Ingest, client: TlsFiles) -> AmqpIngest | None:
        return None

    def track_presence(self, store: PresenceStore, interval_s: float) -> None:
        """Last Wills and retained status tell the server; nothing to poll."""

    def stop(self) -> None:
        """Nothing of ours runs."""

    restarts = 0


class RabbitControl:
    """A RabbitMQ cluster: users and rights by management API, ingest by quorum queue."""

    mode = "rabbitmq"
    managed: ManagedBroker | None = None
    restarts = 0

    def __init__(self, settings: BrokerSettings, layout: BrokerLayout) -> None:
        assert settings.admin_user and settings.admin_password
        self._settings = settings
        self._layout = layout
        self.sweep: PresenceSweep | None = None
        self.admin = RabbitAdmin(
            settings.management_urls,
            settings.admin_user,
            settings.admin_password.get_secret_value(),
        )

    def check_ports(self) -> None:
        """The cluster's ports are its operator's."""

    def start(self, *, crl_pem: bytes, active: list[str], revoked: list[str]) -> None:
        self._layout.directory.mkdir(parents=True, exist_ok=True)
        self._layout.crl.write_bytes(crl_pem)
        sync_users(self.admin, active, revoked)

    def admit(self, device_id: str) -> None:
        self.admin.put_device(device_id)

    def revoke(self, *, crl_pem: bytes, revoked: list[str]) -> None:
        """Delete the users of revoked devices and close their open connections.

        A certificate login needs the user, so a revoked device can neither keep its
        session nor reconnect, on any node.  (A superseded certificate of a device that
        stays enrolled keeps working until it expires: see docs/operations.md.)
        """
        self._layout.crl.write_bytes(crl_pem)
        present = self.admin.users()
        for device_id in revoked:
            if device_id in present:
                closed = self.admin.remove_device(device_id)
                log.info(
                    "revoked %s on the broker cluster (%d connection(s) closed)", device_id, closed
                )

    def health(self) -> dict[str, object]:
        return {"mode": self.mode, **self.admin.health()}

    def server_endpoint(self, client: TlsFiles) -> Endpoint:
        b = self._settings
        tls = TlsFiles(b.ca_file or client.ca_file, client.cert_file, client.key_file)
        return Endpoint(
            b.host,
            b.port,
            tls,
            protocol="3.1.1",
            alternates=tuple(host_port(e) for e in b.endpoints),
        )

    def upstream(self, ingest: Ingest, client: TlsFiles) -> AmqpIngest | None:
        b = self._settings
        tls = TlsFiles(b.ca_file or client.ca_file, client.cert_file, client.key_file)
        return AmqpIngest([host_port(e) for e in b.amqp_endpoints], tls, ingest)

    def track_presence(self, store: PresenceStore, interval_s: float) -> None:
        """Sweep presence against the cluster's connections (see :class:`PresenceSweep`)."""

        def online() -> dict[str, float]:
            return {d.id: d.last_seen or 0.0 for d in store.all_devices(where=_ONLINE)}

        def offline(device_id: str) -> None:
            log.info("%s has no connection on any broker node: offline", device_id)
            store.set_presence(device_id, online=False, ts=time.time())

        self.sweep = PresenceSweep(self.admin, online, offline, interval_s)
        self.sweep.start()

    def stop(self) -> None:
        if self.sweep is not None:
            self.sweep.stop()
        self.admin.close()


def make_control(
    settings: BrokerSettings,
    layout: BrokerLayout,
    ca_file: Path,
    on_give_up: Callable[[str], None] | None = None,
    servers: Sequence[str] = (),
) -> BrokerControl:
    """The control for ``settings.mode``; ``servers`` are the fleet-server replicas' own
    MQTT identities beside ``fleet.server`` (managed mode lets them subscribe)."""
    if settings.mode == "managed":
        return MosquittoControl(settings, layout, ca_file, on_give_up, servers)
    if settings.mode == "rabbitmq":
        return RabbitControl(settings, layout)
    return ExternalControl(settings, layout)
