"""What the API needs from the rest of the server, passed in (no globals)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..auth import Authenticator, LoginThrottle
from ..config import ServerSettings
from ..enrollment import Enrollment
from ..store.base import Store
from ..twin import CommandSender


@dataclass
class ApiContext:
    settings: ServerSettings
    store: Store
    enrollment: Enrollment
    commands: CommandSender | None = None
    metrics: Callable[[], str] | None = None
    clock: Callable[[], float] = time.time
    auth: Authenticator = field(init=False)
    throttle: LoginThrottle = field(init=False)

    def __post_init__(self) -> None:
        self.auth = Authenticator(self.store, clock=self.clock)
        self.throttle = LoginThrottle(self.settings.api.login_attempts_per_minute)
