"""One simulated device: the real :class:`Agent`, counted, with an identity on disk."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from agent.commands import Outcome
from agent.config import AgentSettings, FeedbackSettings, LocalApiSettings, UpdateSettings
from agent.daemon import Agent
from agent.identity import Identity, enroll
from agent.link import DeviceLink
from edgefleet_contract.errors import EdgefleetError, EnrollmentError
from edgefleet_contract.messages import Command, Telemetry
from fleet_server.fleetctl.client import ApiError, Client

from .models import SharedModelService

LINK_TICK_S = 1.0


@dataclass
class Counters:
    """Fleet-wide tallies the live summary line shows (updated from many threads)."""

    telemetry: int = 0
    desired: int = 0
    errors: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)


class SimAgent(Agent):
    """The device daemon unchanged, except that loaded models are shared and the
    events the simulator reports on are counted."""

    model_service_class = SharedModelService

    def __init__(self, settings: AgentSettings, identity: Identity, counters: Counters) -> None:
        self.counters = counters
        super().__init__(settings, identity)

    def _make_link(self) -> DeviceLink:
        link = super()._make_link()
        # The link polls its spool every 0.1 s so a device's backlog drains promptly; a
        # thousand links doing so on one machine spend the CPU on polling alone.  Once a
        # second still drains far faster than telemetry is made.
        link._tick_interval = LINK_TICK_S
        return link

    def telemetry(self) -> Telemetry:
        batch = super().telemetry()
        self.counters.add("telemetry")
        return batch

    def _on_set_desired(self, command: Command) -> Outcome:
        outcome = super()._on_set_desired(command)
        self.counters.add("desired" if outcome.ok else "errors")
        return outcome


def settings_for(
    data_dir: Path,
    *,
    interval: float,
    model: Path | None,
    probation_s: float = 600.0,
    threads: int = 1,
) -> AgentSettings:
    return AgentSettings(
        data_dir=data_dir,
        model=model,
        threads=threads,
        telemetry_interval_s=interval,
        hardware="simulated",
        log_format="text",
        log_level="WARNING",
        local_api=LocalApiSettings(enabled=False),
        updates=UpdateSettings(firmware_handler="none", probation_s=probation_s),
        # feedback follows each reading at once, so a short memory of predictions will do
        feedback=FeedbackSettings(prediction_cache=256),
    )


def ensure_identity(
    client: Client, server_url: str, device_id: str, data_dir: Path, *, tag: str
) -> bool:
    """Load the device's identity, enrolling it first if it has none for this server.

    Returns whether it enrolled now.  A record left by an earlier run that never
    finished enrolling gets a fresh one-time token.
    """
    try:
        identity = Identity.load(data_dir)
        if identity.server_url == server_url.rstrip("/"):
            return False
    except EdgefleetError:
        pass
    try:
        out = client.post("/devices", {"id": device_id, "tags": {"simulated": tag}})
    except ApiError as exc:
        if exc.status != 409:
            raise
        out = client.post(f"/devices/{device_id}/token")
    token = out.get("token") if isinstance(out, dict) else None
    if not isinstance(token, str):
        raise EnrollmentError(f"the server issued no enrollment token for {device_id}")
    enroll(data_dir, server_url, token, force=True)
    return True
