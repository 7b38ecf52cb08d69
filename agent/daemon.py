"""``edge-agent run``: the device daemon.

Threads: the MQTT network loop (link), one command worker, the telemetry
ticker, the certificate renewer and the local prediction API.  Everything the
device must not lose goes through the spool; state is re-reported on every
reconnect.  SIGTERM stops it gracefully (offline status published, spool
flushed to disk).

The daemon must stay up whatever the model does: a package that fails to load
at boot (corrupt, wrong hash, self-test failure) leaves the device connected,
reporting ``health: degraded`` with the reason, and answering 503 on the local
API until a good model is installed with :meth:`Agent.serve`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edgefleet_common.background import IntervalThread
from edgefleet_common.mqtt import Endpoint
from edgefleet_common.private import private_dir
from edgefleet_contract import __version__
from edgefleet_contract.codec import Codec
from edgefleet_contract.errors import ConfigError, EdgefleetError, ModelError
from edgefleet_contract.messages import (
    Command,
    DesiredState,
    FirmwareRef,
    ReportedState,
    Telemetry,
)
from edgefleet_contract.topics import Channel

from .commands import CommandRouter, Outcome
from .config import AgentSettings
from .identity import Identity, renew
from .learning.worker import LearningWorker, skip_reason
from .link import DeviceLink
from .localapi import LocalApi
from .runtime import Model, available_runtimes
from .samples import SampleStore
from .serving import ModelService, drift_recorders
from .spool import DrainPolicy, Spool
from .system import SystemProbe, power_source
from .telemetry import TelemetryBuilder
from .updates.service import DeviceUpdates

if TYPE_CHECKING:
    from .learning.backbone import Backbone

log = logging.getLogger(__name__)

Health = Literal["starting", "ok", "degraded", "failed"]
LOCAL_API_ADDRESS = "local-api.addr"
"""File in the data dir holding the running daemon's API address (for ``edge-agent predict``)."""
STOP_FLUSH_S = 3.0
"""How long a graceful stop waits for a connected link to empty the spool."""


class Agent:
    model_service_class: type[ModelService] = ModelService
    """What holds the served model; the fleet simulator swaps in one that shares loaded
    models between the many agents of one process."""

    def __init__(self, settings: AgentSettings, identity: Identity) -> None:
        self.settings = settings
        self.identity = identity
        self.device_id = identity.device_id
        self.codec = Codec()
        data = private_dir(settings.data_dir)  # spool, samples, identity: the owner's alone
        self.spool = Spool(
            data / "spool.db",
            max_bytes=settings.spool.max_bytes,
            max_age_s=settings.spool.max_age_s,
        )
        self.samples = SampleStore(data / "samples.db", max_samples=settings.feedback.max_samples)
        self.probe = SystemProbe(data)
        self._desired_file = data / "desired.json"
        self.desired = self._load_desired()
        self._interval = float(settings.telemetry_interval_s)
        self.telemetry_builder = TelemetryBuilder(self.device_id)
        self.service = self.model_service_class(
            settings.threads,
            recorder=drift_recorders(settings.drift, data / "drift-baseline.json"),
            samples=self.samples,
            prediction_cache=settings.feedback.prediction_cache,
        )
        self.updates = DeviceUpdates(
            settings, identity.server_url, self.service, on_change=lambda: self._report()
        )
        self.health: Health = "starting"
        self.health_detail: str | None = None
        self._problems: dict[str, str] = {}
        self.local_api = (
            LocalApi(self.service, settings.local_api, health=self.local_health)
            if settings.local_api.enabled
            else None
        )
        self._backbone: tuple[str, Backbone] | None = None
        self._loops = (
            IntervalThread(
                "telemetry",
                self._send_telemetry,
                interval_s=lambda: self._interval,
                log=log,
                failure="telemetry batch failed",
            ),
            IntervalThread(
                "renew",
                self._renew_if_due,
                interval_s=lambda: self.settings.renew_check_s,
                log=log,
                failure="certificate renewal check failed",
            ),
        )
        self.router = CommandRouter(self.device_id, reply=lambda ack: self.link.ack_command(ack))
        self.router.register("set_desired", self._on_set_desired)
        self.router.register("report_state", self._on_report_state)
        self.router.register("renew_cert", self._on_renew)
        self.learning = LearningWorker(
            lambda frame: self.link.send_frame(frame),
            self.samples.dataset,
            threads=settings.threads,
            skip=lambda: skip_reason(power_source()[0]),
            on_trained=self.samples.mark_trained,
            model=self._serving_model,
            backbone=self._serving_backbone,
        )
        self.link = self._make_link()

    def _serving_backbone(self) -> Backbone | None:
        """The frozen backbone of the served package, if it has a trainable head (opened
        once per package, on the first round that needs it)."""
        model = self.service.model
        trainable = model.manifest.trainable if model is not None else None
        if model is None or trainable is None or trainable.embedding is None:
            return None
        cached = self._backbone
        if cached is None or cached[0] != model.package.sha256:
            from .learning.backbone import Backbone

            cached = (model.package.sha256, Backbone(model.package, threads=self.settings.threads))
            self._backbone = cached
        return cached[1]

    def _serving_model(self) -> str | None:
        model = self.service.model
        return model.manifest.name if model is not None else None

    def _make_link(self) -> DeviceLink:
        s = self.settings
        endpoint = Endpoint(
            s.broker.host or self.identity.broker_host,
            s.broker.port or self.identity.broker_port,
            self.identity.tls(),
            protocol=s.broker.protocol,
            keepalive=s.broker.keepalive_s,
            alternates=s.broker.alternates(),
        )
        return DeviceLink(
            self.device_id,
            endpoint,
            self.spool,
            agent_version=__version__,
            policy=DrainPolicy(s.spool.drain_rate_per_s, s.spool.drain_burst, s.spool.max_inflight),
            codec=self.codec,
            on_command=self.router.submit,
            on_frame=self.learning.on_frame,
        )

    # ------------------------------------------------------------- state --

    def _load_desired(self) -> DesiredState | None:
        try:
            return DesiredState.model_validate_json(self._desired_file.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            log.error("ignoring damaged %s: %s", self._desired_file, exc)
            return None

    def reported_state(self) -> ReportedState:
        model = self.service.model
        return ReportedState(
            device_id=self.device_id,
            ts=time.time(),
            agent_version=__version__,
            hardware=self.settings.hardware,
            model=model.ref if model is not None else None,
            firmware=self.updates.firmware_ref()
            or FirmwareRef(version=self.settings.firmware_version, hardware=self.settings.hardware),
            slots=self.updates.slots(),
            update=self.updates.report(),
            capabilities=self.capabilities(),
            health=self.health,
            health_detail=self.health_detail,
            desired_version=self.desired.version if self.desired else 0,
            cert_not_after=self.identity.not_after,
        )

    def capabilities(self) -> list[str]:
        """Commands, runtimes this device can serve, and its model-facing features."""
        extra = [f"runtime:{name}" for name in available_runtimes()]
        if self.local_api is not None:
            extra.append("local-api")
        return [*self.router.names, "predict", "feedback", *extra]

    # -------------------------------------------------------------- model --

    def boot_model_path(self) -> Path | None:
        """The package to serve at boot: the active A/B slot's (after settling an
        interrupted update, see agent/updates/boot.py); on first boot ``settings.model``
        is copied into slot a."""
        return self.updates.boot_model_path(self.settings.model)

    def serve(self, path: Path) -> Model:
        """Verify, self-test and activate the package at ``path``; re-report state.

        Raises :class:`ModelError` if it is refused; the previous model (if
        any) keeps serving and health says why the new one was refused.
        """
        try:
            model = self.service.replace(path)
        except ModelError as exc:
            self._set_problem("model", f"model {path.name} refused: {exc}")
            raise
        self._set_problem("model", None)
        m = model.manifest
        log.info("serving %s %s (%s) on %s", m.name, m.version, m.flavor, model.backend)
        self._report()
        return model

    def _load_boot_model(self) -> None:
        path = self.boot_model_path()
        if path is None:
            log.info("no model configured; the local API answers 503 until one is installed")
            return
        try:
            self.serve(path)
        except ModelError as exc:
            log.error("cannot serve the boot model, running degraded: %s", exc)

    def _set_problem(self, key: str, detail: str | None) -> None:
        if detail is None:
            self._problems.pop(key, None)
        else:
            self._problems[key] = detail[:600]
        if self._problems:
            self.health = "degraded"
            self.health_detail = "; ".join(self._problems.values())[:2000]
        else:
            self.health, self.health_detail = "ok", None

    def local_health(self) -> dict[str, object]:
        """What ``GET /v1/health`` answers: 200 only when a model is serving."""
        model = self.service.model
        doc: dict[str, object] = {"status": self.health, "device_id": self.device_id}
        if model is not None:
            doc["model"] = f"{model.manifest.name}@{model.manifest.version}"
        else:
            doc["status"] = "no-model" if self.health == "ok" else self.health
        if self.health_detail:
            doc["detail"] = self.health_detail
        return doc

    def _report(self) -> None:
        self.link.report(self.reported_state())

    def _on_set_desired(self, command: Command) -> Outcome:
        desired = DesiredState.model_validate(command.args)
        if self.desired is not None and desired.version <= self.desired.version:
            return Outcome(True, f"already at desired version {self.desired.version}")
        interval = desired.config.get("telemetry_interval_s")
        if interval is not None:
            if not isinstance(interval, int | float) or not 0.05 <= float(interval) <= 3600:
                return Outcome(False, "telemetry_interval_s must be a number of seconds, 0.05-3600")
            self._interval = float(interval)
        tmp = self._desired_file.with_suffix(".tmp")
        tmp.write_text(desired.model_dump_json())
        tmp.replace(self._desired_file)
        self.desired = desired
        queued = self.updates.submit(desired)
        self._report()
        detail = f"applied desired version {desired.version}"
        return Outcome(True, f"{detail}; {queued}" if queued else detail)

    def _on_report_state(self, command: Command) -> Outcome:
        self._report()
        return Outcome(True, "state re-published")

    def _on_renew(self, command: Command) -> Outcome:
        self._renew()
        return Outcome(True, f"certificate renewed, valid until {self.identity.not_after:.0f}")

    # ---------------------------------------------------------- telemetry --

    def telemetry(self) -> Telemetry:
        # Batch ids come from a random boot id: boards without a real-time clock boot
        # in 1970, and time-based ids would repeat and be dropped as duplicates.
        window = self.service.snapshot()
        self.updates.record_window(window)
        return self.telemetry_builder.build(
            window=window,
            system=self.probe.sample(),
            learning=self.samples.stats(),
            shadow=self.service.shadow_snapshot(),
            link=self.link.link_stats,
            spool=self.spool.stats(),
        )

    def _send_telemetry(self) -> None:
        self.link.send(Channel.TELEMETRY, self.codec.encode(self.telemetry()))

    # ------------------------------------------------------------ renewal --

    def _renew(self) -> None:
        self.identity = renew(self.identity)
        log.info("certificate renewed; valid until %.0f", self.identity.not_after)
        old = self.link
        self.link = self._make_link()
        old.stop()
        self.link.start()
        self._report()

    def _renew_if_due(self) -> None:
        try:
            if self.identity.renewal_due(time.time()):
                self._renew()
        except EdgefleetError as exc:
            log.warning("certificate renewal failed (will retry): %s", exc)

    # ---------------------------------------------------------- lifecycle --

    def start(self) -> None:
        self._load_boot_model()
        self.updates.start(self.desired)
        self._start_local_api()
        if self.health == "starting":
            self._set_problem("boot", None)
        self.router.start()
        self.link.start()
        self._report()
        for loop in self._loops:
            loop.start()
        log.info(
            "agent %s started (broker %s:%d)",
            self.device_id,
            self.link.endpoint.host,
            self.link.endpoint.port,
        )

    def _start_local_api(self) -> None:
        address_file = self.settings.data_dir / LOCAL_API_ADDRESS
        address_file.unlink(missing_ok=True)
        if self.local_api is None:
            return
        try:
            self.local_api.start()
        except ConfigError as exc:
            log.error("%s", exc)
            self._set_problem("local_api", str(exc))
            return
        tmp = address_file.with_suffix(".tmp")
        tmp.write_text(self.local_api.address + "\n")
        tmp.replace(address_file)

    def stop(self) -> None:
        for loop in self._loops:
            loop.stop(5)
        if self.local_api is not None:
            self.local_api.stop()
            (self.settings.data_dir / LOCAL_API_ADDRESS).unlink(missing_ok=True)
        self.updates.stop()
        self.router.stop()
        self.learning.stop()
        self._flush_spool(STOP_FLUSH_S)
        self.link.stop()
        self.spool.close()
        self.samples.close()

    def _flush_spool(self, timeout: float) -> None:
        # A batch written in the last tick before SIGTERM would otherwise wait in the
        # spool until the next boot: give a connected link a moment to deliver it.
        # Nothing is lost either way; the spool is durable.
        deadline = time.monotonic() + timeout
        while self.link.connected.is_set() and time.monotonic() < deadline:
            if self.spool.stats().depth == 0:
                return
            time.sleep(0.05)


def status(data_dir: Path) -> dict[str, object]:
    """What `edge-agent status` prints: identity, certificate, spool, and the running
    daemon's serving health when its local API answers."""
    identity = Identity.load(data_dir)
    spool = Spool(data_dir / "spool.db", max_bytes=1 << 40, max_age_s=1e12)
    try:
        stats = spool.stats()
    finally:
        spool.close()
    return {
        "device_id": identity.device_id,
        "server": identity.server_url,
        "broker": f"{identity.broker_host}:{identity.broker_port}",
        "cert_not_after": identity.not_after,
        "renewal_due": identity.renewal_due(time.time()),
        "spool": json.loads(stats.model_dump_json()),
        "serving": _serving(data_dir),
    }


def _serving(data_dir: Path) -> object:
    from . import localclient

    try:
        where = (data_dir / LOCAL_API_ADDRESS).read_text().strip()
        return localclient.request(where, "GET", "/v1/health", timeout=5)[1]
    except (OSError, ValueError):
        return {"status": "unknown", "detail": "no running daemon answers on the local API"}
