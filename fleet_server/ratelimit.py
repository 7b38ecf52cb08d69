"""Log throttling: a hostile or broken device must not be able to flood the server log."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class LogThrottle:
    """Emit at most one record per key per interval, then say how many were suppressed."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """Log ``msg`` unless ``key`` was logged within the interval; returns whether it logged."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg = f"{msg} (+{suppressed} similar suppressed)"
        self._log.warning(msg, *args)
        return True
