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

from edgefleet_common.mqtt import Endpoint, TlsFiles
from edgefleet_common.private import private_dir
from edgefleet_contract.errors import ConfigError, NotFound

from .api import ApiContext, create_app
from .auth import hash_password, verify_password
from .broker import BrokerLayout, ManagedBroker
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
from .rollouts.artifacts import RegistryResolver
from .rollouts.driver import RolloutDriver
from .selector import parse as parse_selector
from .store import database_exists, open_store
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

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.layout = Layout(settings.data_dir)
        self._check_initialized()
        self.metrics = Metrics()
        private_dir(settings.data_dir)  # even if it existed before with a wider mode
        self.store: Store = open_store(settings.database_url)
        self.ca = FleetCA.load(self.layout.ca)
        self.broker = self._managed_broker()
        self.enrollment = Enrollment(
            self.store,
            self.ca,
            token_ttl_s=settings.enrollment.token_ttl_s,
            cert_validity_s=settings.enrollment.cert_validity_s,
            on_revoke=self._apply_revocation,
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
        self.link = ServerLink(self._endpoint(), self.ingest)
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
        )
        self.events.stored.subscribe(self.link.acknowledge)
        self.events.updated.subscribe(self.rollouts.device_updated)
        self.events.updated.subscribe(self.reconciler)
        self.events.updated.subscribe(self.training.device_changed)
        self.events.frames.subscribe(self.training.deliver)
        self.app = create_app(
            ApiContext(
                settings=settings,
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
        self._register_gauges()
        self._http: uvicorn.Server | None = None
        self.failed = threading.Event()
        """Set when a part the server cannot run without gave up (see ``failure``)."""
        self.failure: str | None = None
        self._maintenance = threading.Event()
        self.maintenance_interval_s = 600.0
        """How often the retention pass runs (read before each wait)."""
        self._maintenance_thread: threading.Thread | None = None
        self._http_thread: threading.Thread | None = None

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

    def _managed_broker(self) -> ManagedBroker | None:
        b = self.settings.broker
        if b.mode != "managed":
            return None
        return ManagedBroker(
            self.layout.broker,
            ca_file=self.ca.cert_file,
            bind=b.bind,
            port=b.port,
            mosquitto_bin=b.mosquitto_bin,
            max_connections=b.max_connections,
            on_give_up=self._fail,
        )

    def _rollout_driver(self) -> RolloutDriver:
        """The driver resolves what a device ran before (for rollbacks) through the registry
        and reads each model version's calibration from its package card."""
        return RolloutDriver(
            self.store,
            self.link,
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
            fn=lambda: [((), float(self.broker.restarts if self.broker else 0))],
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

    def _endpoint(self) -> Endpoint:
        b = self.settings.broker
        if b.mode == "managed":
            tls = TlsFiles(self.ca.cert_file, self.layout.client_cert, self.layout.client_key)
            return Endpoint("127.0.0.1", b.port, tls, protocol=b.protocol)
        if b.tls and b.ca_file is None:
            raise ConfigError("broker.ca_file is required for a TLS external broker")
        external_tls = (
            TlsFiles(b.ca_file, self.layout.client_cert, self.layout.client_key)
            if b.tls and b.ca_file
            else None
        )
        return Endpoint(
            b.host,
            b.port,
            external_tls,
            protocol=b.protocol,
            username=b.username,
            password=b.password.get_secret_value() if b.password else None,
        )

    def _register_candidate(self, path: Path, lineage: dict[str, object]) -> None:
        """A federated run's winning candidate enters the registry as a signed TUF target."""
        artifact = self.artifacts.add_model(
            path, lineage=lineage, actor=f"federation:{lineage.get('run_id')}"
        )
        if artifact.flavor == lineage.get("parent_flavor"):  # one flavour ships: the parent's
            release_candidate(self.rollouts, artifact, lineage)

    def _apply_revocation(self, crl_pem: bytes) -> None:
        if self.broker is None:
            log.warning(
                "external broker: install the new CRL there yourself (%s)", self.layout.broker.crl
            )
            self.layout.broker.directory.mkdir(parents=True, exist_ok=True)
            self.layout.broker.crl.write_bytes(crl_pem)
            return
        revoked = self._revoked_ids()
        self.broker.configure(crl_pem=crl_pem, revoked=revoked)
        self.broker.reload()
        # The broker re-reads CRL and ACL on SIGHUP: a revoked device that is still
        # connected is denied everything, but its Last Will never fires.  It is
        # offline as far as the fleet is concerned.
        now = time.time()
        for device_id in revoked:
            self.store.set_presence(device_id, online=False, ts=now)

    def _revoked_ids(self) -> list[str]:
        gone = parse_selector("state:revoked or state:decommissioned")
        return [d.id for d in self.store.all_devices(where=gone)]

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
        check_port(api.host, api.port, setting="api.port", env="FLEET_API__PORT", what="API")
        b = self.settings.broker
        if self.broker is not None:
            self.broker.end_stale()  # a broker a killed server left on this data dir
            check_port(
                b.bind, b.port, setting="broker.port", env="FLEET_BROKER__PORT", what="broker"
            )

    def _fail(self, reason: str) -> None:
        self.failure = reason
        self.failed.set()

    def _start_parts(self) -> None:
        if self.broker is not None:
            self.broker.configure(crl_pem=self.enrollment.crl(), revoked=self._revoked_ids())
            self.broker.start()
        # Presence in the database may be stale from before a restart; the broker's
        # retained status messages re-deliver the truth as soon as we subscribe.
        self.store.reset_presence()
        self.ingest.start()
        self.link.start()
        self.training.resume()
        self.rollouts.reload()
        self.rollouts.start()
        self._maintenance_thread = threading.Thread(
            target=self._maintain, name="maintenance", daemon=True
        )
        self._maintenance_thread.start()
        self.tuf_timer.start()
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

    def _maintain(self) -> None:
        """Apply telemetry retention every ``maintenance_interval_s`` (ten minutes; raw
        batches, then rollups)."""
        t = self.settings.telemetry
        while not self._maintenance.wait(self.maintenance_interval_s):
            try:
                removed = self.store.prune(
                    time.time(),
                    raw_retention_s=t.raw_retention_s,
                    rollup_retention_s=t.rollup_retention_s,
                )
                if removed:
                    log.info("retention: removed %d old telemetry rows", removed)
            except Exception:
                log.exception("retention pass failed; will retry")

    def stop(self) -> None:
        self._maintenance.set()
        self.tuf_timer.stop()
        if self._http is not None:
            self._http.should_exit = True
            if self._http_thread is not None:
                self._http_thread.join(10)
        self.training.shutdown()
        self.rollouts.stop()
        self.link.stop()
        self.ingest.stop()
        self.deltas.close()
        if self.broker is not None:
            self.broker.stop()
        self.store.close()
