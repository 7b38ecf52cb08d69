"""``edge-agent run``: the device daemon.

Threads: the MQTT network loop (link), one command worker, the telemetry
ticker and the certificate renewer.  Everything the device must not lose goes
through the spool; state is re-reported on every reconnect.  SIGTERM stops it
gracefully (offline status published, spool flushed to disk).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from edgefleet_contract import __version__
from edgefleet_contract.codec import Codec
from edgefleet_contract.errors import EdgefleetError
from edgefleet_contract.messages import Command, DesiredState, ReportedState, Telemetry
from edgefleet_contract.mqtt import Endpoint
from edgefleet_contract.topics import Channel

from .commands import CommandRouter, Outcome
from .config import AgentSettings
from .identity import Identity, renew
from .learning.worker import LearningWorker, skip_reason
from .link import DeviceLink
from .samples import SampleStore
from .spool import DrainPolicy, Spool
from .system import SystemProbe, power_source
from .telemetry import TelemetryBuilder

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, settings: AgentSettings, identity: Identity) -> None:
        self.settings = settings
        self.identity = identity
        self.device_id = identity.device_id
        self.codec = Codec()
        data = settings.data_dir
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
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
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
        )
        self.link = self._make_link()

    def _make_link(self) -> DeviceLink:
        s = self.settings
        endpoint = Endpoint(
            s.broker.host or self.identity.broker_host,
            s.broker.port or self.identity.broker_port,
            self.identity.tls(),
            protocol=s.broker.protocol,
            keepalive=s.broker.keepalive_s,
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
        return ReportedState(
            device_id=self.device_id,
            ts=time.time(),
            agent_version=__version__,
            hardware=self.settings.hardware,
            capabilities=self.router.names,
            health="ok",
            desired_version=self.desired.version if self.desired else 0,
            cert_not_after=self.identity.not_after,
        )

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
        self._report()
        return Outcome(True, f"applied desired version {desired.version}")

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
        return self.telemetry_builder.build(
            system=self.probe.sample(),
            learning=self.samples.stats(),
            link=self.link.link_stats,
            spool=self.spool.stats(),
        )

    def _telemetry_loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.link.send(Channel.TELEMETRY, self.codec.encode(self.telemetry()))
            except Exception:
                log.exception("telemetry batch failed")

    # ------------------------------------------------------------ renewal --

    def _renew(self) -> None:
        self.identity = renew(self.identity)
        log.info("certificate renewed; valid until %.0f", self.identity.not_after)
        old = self.link
        self.link = self._make_link()
        old.stop()
        self.link.start()
        self._report()

    def _renew_loop(self) -> None:
        while not self._stop.wait(60):
            try:
                if self.identity.renewal_due(time.time()):
                    self._renew()
            except EdgefleetError as exc:
                log.warning("certificate renewal failed (will retry): %s", exc)

    # ---------------------------------------------------------- lifecycle --

    def start(self) -> None:
        self.router.start()
        self.link.start()
        self._report()
        for target, name in ((self._telemetry_loop, "telemetry"), (self._renew_loop, "renew")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "agent %s started (broker %s:%d)",
            self.device_id,
            self.link.endpoint.host,
            self.link.endpoint.port,
        )

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self.router.stop()
        self.learning.stop()
        self.link.stop()
        self.spool.close()
        self.samples.close()


def status(data_dir: Path) -> dict[str, object]:
    """What `edge-agent status` prints: identity, certificate and spool, without a daemon."""
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
    }
