"""The thread that keeps the published metadata fresh.

It calls :meth:`TufRepository.refresh` when the next role reaches half of its
lifetime (and at least every five minutes, so a clock jump or a failed attempt
is retried soon), which re-signs the timestamp -- and snapshot or targets when
they are due -- long before a device would refuse them as expired.
"""

from __future__ import annotations

import logging
import threading

from .repository import TufRepository

log = logging.getLogger(__name__)

MAX_SLEEP_S = 300.0
RETRY_S = 60.0


class ResignTimer:
    def __init__(self, repo: TufRepository) -> None:
        self.repo = repo
        self.resigned = 0
        """Refreshes that re-signed something (for tests and logs)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()  # restartable: a replica may take the re-signing lease again
        self._thread = threading.Thread(target=self._run, name="tuf-timer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            try:
                renewed = self.repo.refresh()
                if renewed:
                    self.resigned += 1
                    log.info("TUF: re-signed %s", ", ".join(renewed))
                wait = min(max(self.repo.next_refresh_in(), 1.0), MAX_SLEEP_S)
            except Exception:
                log.exception("TUF re-signing failed; retrying in a minute")
                wait = RETRY_S
