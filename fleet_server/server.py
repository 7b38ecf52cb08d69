"""``fleet-server``'s process: store, CA, managed broker, MQTT link, ingest and the API.

The pieces are wired here and nowhere else.  Start order follows the data:
store -> broker -> ingest writer -> MQTT link -> HTTP API; stop order is the
reverse, so nothing is received that cannot be written, and everything
received is written (or left unacknowledged for the broker to redeliver).
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from edgefleet_common.mqtt import TlsFiles
from edgefleet_common.private import private_dir
from edgefleet_contract.errors import BrokerError, ConfigError, NotFound

from .amqp_ingest import AmqpIngest
from .api import ApiContext, create_app
from .auth import hash_password, verify_password
from .broker import BrokerLayout, ManagedBroker
from .broker_control import make_control
from .config import SERVER_IDENTITY, ServerSettings
from .enrollment import Enrollment
from .events import DeviceEvents
from .federation.release import release_candidate
from .federation.wiring import make_training
from .ingest import Ingest
from .link import ServerLink
from .metrics import Metrics
from .pki import FleetCA, write_private
from .preflight import check_data_dir, check_port
from .quota import DeviceQuota, Rate
from .reconcile import Reconciler
from .registry import ArtifactRegistry, BlobStore, DeltaCache
from .registry.cards import calibration_of
from .retention import RetentionTimer
from .roles import check_role, lease_factory, replica_client_cert, singletons
from .roles import subscriptions as role_subscriptions
from .rollouts.artifacts import RegistryResolver
from .rollouts.driver import RolloutDriver
from .selector import parse as parse_selector
from .store import database_exists, is_postgres, open_store
from .store.base import Store
from .tuf import TufRepository
from .tuf.bootstrap import initialize_tuf, tuf_lifetimes
from .tuf.timer import ResignTimer

log = logging.getLogger(__name__)

SERVER_CERT_VALIDITY_S = 365 * 86400


def telemetry_quota(settings: ServerSettings) -> DeviceQuota:
    t = settings.telemetry
    return DeviceQuota(
        Rate(t.device_batches_per_s, t.device_batch_burst),
        Rate(t.device_bytes_per_s, t.device_bytes_burst),
    )


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca"

    @property
    def broker(self) -> BrokerLayout:
        return BrokerLayout(self.root / "broker")

    @property
    def client_cert(self) -> Path:
        return self.root / "server" / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.root / "server" / "client.key"

    @property
    def tuf(self) -> Path:
        return self.root / "tuf"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"


def initialize(settings: ServerSettings, *, admin_password: str | None = None) -> str | None:
    """Create CA, certificates, database and the first admin.  Idempotent.

    Returns the generated admin password (shown once) when it made the admin user.
    """
    layout = Layout(settings.data_dir)
    check_data_dir(settings.data_dir, create=True)
    private_dir(settings.data_dir)
    now = time.time()
    ca = (
        FleetCA.load(layout.ca)
        if (layout.ca / "ca.key").exists()
        else FleetCA.create(layout.ca, now=now)
    )
    broker = layout.broker
    if not broker.cert.exists():
        broker.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        hosts = [settings.broker.host, *settings.broker.san_hosts]
        ips = list(settings.broker.san_ips)
        names = [h for h in dict.fromkeys(hosts) if not _is_ip(h)]
        ips += [h for h in hosts if _is_ip(h) and h not in ips]
        cert, key = ca.issue_server_cert(names or ["localhost"], ips, now=now)
        broker.cert.write_bytes(cert)
        write_private(broker.key, key)
    if not layout.client_cert.exists():
        cert, key = ca.issue_client_cert(
            SERVER_IDENTITY, validity_s=SERVER_CERT_VALIDITY_S, now=now
        )
        layout.client_cert.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        layout.client_cert.write_bytes(cert)
        write_private(layout.client_key, key)
    initialize_tuf(settings)
    store = open_store(settings.database_url)
    try:
        if store.list_users():
            _keep_admin_password(store, settings, admin_password)
            return None
        password = admin_password or secrets.token_urlsafe(12)
        store.create_user("admin", role="admin", password_hash=hash_password(password), now=now)
        return None if admin_password else password
    finally:
        store.close()


def _keep_admin_password(store: Store, settings: ServerSettings, password: str | None) -> None:
    """An initialized dir keeps its users; a different admin password asked for is an error.

    Re-running ``init`` is how missing certificates are re-made, so it succeeds, but it
    must not say "initialized" while the password the operator typed was ignored.
    """
    if password is None:
        return
    try:
        current = store.get_user("admin").password_hash
    except NotFound:
        current = None
    if current is not None and verify_password(password, current):
        return  # already what was asked for
    raise ConfigError(
        f"{settings.data_dir} is already initialized and its admin password was NOT changed; "
        f"to set it: fleet-server users reset-password admin --password-stdin "
        f"--data-dir {settings.data_dir}"
    )


def _is_ip(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class FleetServer:
    """Every part of the server, each built from parts that already exist.

    Device events (ingest's "stored", "device updated", "frame") go through one
    :class:`~fleet_server.events.DeviceEvents` made before ingest; the link,
    the rollout driver, the reconciler and training subscribe once built.
    """

    def __init__(self, settings: ServerSettings, *, role: str = "all") -> None:
        self.settings = settings
        self.role = role
        url = settings.database_url
        self.postgres_url = url if is_postgres(url) else None
        self.parts = check_role(role, self.postgres_url)
        self.shared = self.postgres_url is not None
        """Other fleet-server processes may share the store (see fleet_server.roles)."""
        self.layout = Layout(settings.data_dir)
        self._check_initialized()
        self.metrics = Metrics()
        private_dir(settings.data_dir)  # even if it existed before with a wider mode
        self.store: Store = open_store(settings.database_url)
        self.ca = FleetCA.load(self.layout.ca)
        self.control = make_control(
            settings.broker,
            self.layout.broker,
            self.ca.cert_file,
            on_give_up=self._fail,
            servers=[f"{SERVER_IDENTITY}.{r}" for r in settings.broker.replicas],
        )
        self.broker: ManagedBroker | None = self.control.managed
        self.enrollment = Enrollment(
            self.store,
            self.ca,
            token_ttl_s=settings.enrollment.token_ttl_s,
            cert_validity_s=settings.enrollment.cert_validity_s,
            on_revoke=self._apply_revocation,
            on_admit=self.control.admit,
        )
        self.events = DeviceEvents()
        self.ingest = Ingest(
            self.store,
            metrics=self.metrics,
            queue_size=settings.telemetry.queue_size,
            batch_size=settings.telemetry.batch_size,
            acker=self.events.stored,
            on_device_update=self.events.updated,
            on_frame=self.events.frames,
            quota=telemetry_quota(settings),
        )
        self.upstream, self.link = self._device_links()
        self.tuf = TufRepository(self.layout.tuf, lifetimes=tuf_lifetimes(settings))
        self.artifacts = ArtifactRegistry(
            self.store, BlobStore(self.layout.artifacts), tuf=self.tuf
        )
        self.deltas = DeltaCache(self.artifacts.blobs, self.layout.root / "deltas")
        self.artifacts.on_added.append(self.deltas.on_registered(self.artifacts))
        self.tuf_timer = ResignTimer(self.tuf)
        self.rollouts = self._rollout_driver()
        self.reconciler = Reconciler(self.store, self.link)
        self.training = make_training(
            settings,
            self.store,
            self.link,
            metrics=self.metrics,
            on_candidate=self._register_candidate,
            artifacts=self.artifacts,
            shared=self.shared,
        )
        self._subscribe_to_events()
        self.app = self._create_app()
        self._register_gauges()
        self._http: uvicorn.Server | None = None
        self.presence_sweep_s = 10.0
        """How often a broker that cannot publish every Last Will is asked who is connected."""
        self.failed = threading.Event()
        """Set when a part the server cannot run without gave up (see ``failure``)."""
        self.failure: str | None = None
        self.retention = RetentionTimer(self.store, settings.telemetry)
        self.singletons = singletons(
            lease_factory(self.postgres_url, replica=settings.mqtt_identity),
            rollouts=self.rollouts,
            training=self.training,
            tuf_timer=self.tuf_timer,
            retention=self.retention,
            shared=self.shared,
        )
        self._http_thread: threading.Thread | None = None

    def _device_links(self) -> tuple[AmqpIngest | None, ServerLink]:
        """The engine's own consumer of device messages when it has one (then the MQTT
        link only sends downstream), and the server's MQTT link."""
        client = self._client_tls()
        upstream = self.control.upstream(self.ingest, client) if self.parts.ingest else None
        link = ServerLink(
            self.control.server_endpoint(client),
            self.ingest,
            client_id=self.settings.mqtt_identity,
            subscriptions=(
                [] if upstream is not None else role_subscriptions(self.parts, shared=self.shared)
            ),
        )
        return upstream, link

    def _subscribe_to_events(self) -> None:
        self.events.stored.subscribe((self.upstream or self.link).acknowledge)
        self.events.updated.subscribe(self.rollouts.device_updated)
        self.events.updated.subscribe(self.reconciler)
        self.events.updated.subscribe(self.training.device_changed)
        self.events.frames.subscribe(self.training.deliver)

    def _create_app(self) -> FastAPI:
        return create_app(
            ApiContext(
                settings=self.settings,
                store=self.store,
                enrollment=self.enrollment,
                commands=self.link,
                metrics=self.metrics.render,
                training=self.training,
                artifacts=self.artifacts,
                tuf=self.tuf,
                deltas=self.deltas,
                rollouts=self.rollouts,
            )
        )

    @property
    def maintenance_interval_s(self) -> float:
        """How often the retention pass runs (read before each wait)."""
        return self.retention.interval_s

    @maintenance_interval_s.setter
    def maintenance_interval_s(self, value: float) -> None:
        self.retention.interval_s = value

    def _check_initialized(self) -> None:
        settings = self.settings
        check_data_dir(settings.data_dir, create=False)
        if not (self.layout.ca / "ca.key").exists() or not database_exists(settings.database_url):
            raise ConfigError(
                f"{settings.data_dir} is not initialized; run `fleet-server init` first"
            )
        if not (self.layout.tuf / "metadata" / "1.root.json").exists():
            raise ConfigError(
                f"{settings.data_dir} has no TUF repository; run `fleet-server init` again"
            )

    def _rollout_driver(self) -> RolloutDriver:
        """The driver resolves what a device ran before (for rollbacks) through the registry
        and reads each model version's calibration from its package card."""
        return RolloutDriver(
            self.store,
            self.link,
            shared=self.shared,
            resolver=RegistryResolver(self.artifacts),
            calibrations=functools.partial(
                calibration_of,
                lambda name, version: (
                    self.store.find_artifacts(
                        kind="model", name=name, version=version, limit=20
                    ).items
                ),
                self.artifacts.cards,
                self.artifacts.blob,
            ),
        )

    def _register_gauges(self) -> None:
        self.metrics.gauge(
            "edgefleet_tuf_timestamp_expires_in_seconds",
            "Seconds until the published TUF timestamp expires (devices refuse it then)",
            fn=lambda: [((), self.tuf.timestamp().signed.expires.timestamp() - time.time())],
        )
        self.metrics.gauge(
            "edgefleet_broker_connected",
            "1 when the server's MQTT session is up",
            fn=lambda: [((), 1.0 if self.link.connected.is_set() else 0.0)],
        )
        self.metrics.counted(
            "edgefleet_broker_restarts_total",
            "Times the managed broker was restarted",
            fn=lambda: [((), float(self.control.restarts))],
        )
        self.metrics.gauge(
            "edgefleet_broker_nodes_running",
            "Broker nodes up, as the broker-control seam sees them (cluster: per its API)",
            fn=lambda: [((), self._broker_nodes_running())],
        )
        self.metrics.gauge(
            "edgefleet_rollouts_live",
            "Rollouts the driver is running (including paused and halted ones)",
            fn=lambda: [((), float(self.rollouts.live_count))],
        )
        self.metrics.counted(
            "edgefleet_rollout_errors_total",
            "Rollout events that failed and were retried from the last save",
            fn=lambda: [((), float(self.rollouts.errors))],
        )
        self.metrics.gauge(
            "edgefleet_devices_online",
            "Devices whose last status is online",
            fn=lambda: [((), float(self.store.count_online()))],
        )

    def _broker_nodes_running(self) -> float:
        try:
            health = self.control.health()
        except BrokerError:
            return 0.0
        running = health.get("running", 1 if health.get("up", True) else 0)
        return float(running) if isinstance(running, int | float) else 0.0

    def _client_tls(self) -> TlsFiles:
        """The server's own MQTT client certificate (a replica's own, when it is one)."""
        cert, key = self.layout.client_cert, self.layout.client_key
        if self.settings.replica:
            cert, key = replica_client_cert(
                self.ca, self.settings.data_dir, self.settings.mqtt_identity
            )
        return TlsFiles(self.ca.cert_file, cert, key)

    def _register_candidate(self, path: Path, lineage: dict[str, object]) -> None:
        """A federated run's winning candidate enters the registry as a signed TUF target."""
        artifact = self.artifacts.add_model(
            path, lineage=lineage, actor=f"federation:{lineage.get('run_id')}"
        )
        if artifact.flavor == lineage.get("parent_flavor"):  # one flavour ships: the parent's
            release_candidate(self.rollouts, artifact, lineage)

    def _apply_revocation(self, crl_pem: bytes) -> None:
        revoked = self._revoked_ids()
        self.control.revoke(crl_pem=crl_pem, revoked=revoked)
        # A revoked device that is still connected is denied everything (or cut off),
        # and its Last Will may never fire: it is offline as far as the fleet is concerned.
        now = time.time()
        for device_id in revoked:
            self.store.set_presence(device_id, online=False, ts=now)

    def _revoked_ids(self) -> list[str]:
        gone = parse_selector("state:revoked or state:decommissioned")
        return [d.id for d in self.store.all_devices(where=gone)]

    def _active_ids(self) -> list[str]:
        active = parse_selector("not (state:revoked or state:decommissioned)")
        return [d.id for d in self.store.all_devices(where=active)]

    # ------------------------------------------------------------ lifecycle --

    def start(self) -> None:
        """Start every part, or none: a failed start stops what it had started."""
        self._check_ports()
        try:
            self._start_parts()
        except BaseException:
            self.stop()
            raise
        log.info(
            "fleet server up: API %s, broker %s:%d",
            self.settings.api_url,
            self.settings.broker.host,
            self.settings.broker.port,
        )

    def _check_ports(self) -> None:
        api = self.settings.api
        if self.parts.api:
            check_port(api.host, api.port, setting="api.port", env="FLEET_API__PORT", what="API")
        self.control.check_ports()

    def _fail(self, reason: str) -> None:
        self.failure = reason
        self.failed.set()

    def _start_parts(self) -> None:
        self.control.start(
            crl_pem=self.enrollment.crl(), active=self._active_ids(), revoked=self._revoked_ids()
        )
        if not self.shared and self.upstream is None:
            # Presence in the database may be stale from before a restart; the broker's
            # retained status messages re-deliver the truth as soon as we subscribe.
            # (Shared subscriptions get no retained messages, and with several
            # processes the presence in the database is kept by the live ones; an
            # engine-native queue kept every status message while we were away.)
            self.store.reset_presence()
        self.ingest.start()
        if self.upstream is not None:
            self.upstream.start()
        self.link.start()
        self.control.track_presence(self.store, self.presence_sweep_s)
        self.rollouts.reload()
        if self.parts.singletons:
            for singleton in self.singletons:
                singleton.start()
        if self.parts.api:
            self._start_http()

    def _start_http(self) -> None:
        config = uvicorn.Config(
            self.app,
            host=self.settings.api.host,
            port=self.settings.api.port,
            log_level="warning",
            access_log=False,
            ws="none",
        )
        self._http = uvicorn.Server(config)
        self._http_thread = threading.Thread(target=self._http.run, name="api", daemon=True)
        self._http_thread.start()
        deadline = time.monotonic() + 15
        while not self._http.started:
            if not self._http_thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(
                    f"the API could not listen on {self.settings.api.host}:"
                    f"{self.settings.api.port}; free the port or set api.port "
                    "(environment FLEET_API__PORT)"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        if self._http is not None:
            self._http.should_exit = True
            if self._http_thread is not None:
                self._http_thread.join(10)
        for singleton in reversed(self.singletons):
            singleton.stop()
        self.training.shutdown()
        self.rollouts.stop()
        self.link.stop()
        if self.upstream is not None:
            self.upstream.stop()
        self.ingest.stop()
        self.deltas.close()
        self.control.stop()
        self.store.close()
