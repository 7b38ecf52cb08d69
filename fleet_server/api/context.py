"""What the API needs from the rest of the server, passed in (no globals).

``commands`` is whatever delivers a :class:`~edgefleet_contract.messages.Command`
to a device (the server's MQTT link); ``None`` means this server has no broker
session, and routes that must reach a device answer 503.  ``metrics`` renders
the Prometheus text of the server's metrics (``None``: /metrics is empty).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..auth import Authenticator, LoginThrottle
from ..config import ServerSettings
from ..enrollment import Enrollment
from ..federation.runner import TrainingService
from ..registry import ArtifactRegistry, DeltaCache
from ..rollouts.driver import RolloutDriver
from ..store import is_postgres
from ..store.base import Store
from ..tuf import TufRepository
from ..twin import CommandSender, Twin


@dataclass
class ApiContext:
    settings: ServerSettings
    store: Store
    enrollment: Enrollment
    commands: CommandSender | None = None
    metrics: Callable[[], str] | None = None
    clock: Callable[[], float] = time.time
    training: TrainingService | None = None
    """The federated training service, if this server has one."""
    artifacts: ArtifactRegistry | None = None
    """The artifact registry; ``None`` means artifact and TUF routes answer 503."""
    tuf: TufRepository | None = None
    deltas: DeltaCache | None = None
    rollouts: RolloutDriver | None = None
    auth: Authenticator = field(init=False)
    throttle: LoginThrottle = field(init=False)
    audit_failures: int = field(init=False, default=0)
    """Audit entries the store refused (each is also logged as an error)."""

    @property
    def twin(self) -> Twin:
        """Desired state's one path to the devices, over this context's store and link."""
        return Twin(self.store, self.commands, clock=self.clock)

    def __post_init__(self) -> None:
        self.auth = Authenticator(
            self.store, clock=self.clock, max_ttl_s=self.settings.api.max_token_ttl_s
        )
        # Several processes on one PostgreSQL database share the failed logins.
        shared = self.store if is_postgres(self.settings.database_url) else None
        self.throttle = LoginThrottle(
            self.settings.api.login_attempts_per_minute, window_s=60.0, shared=shared
        )
