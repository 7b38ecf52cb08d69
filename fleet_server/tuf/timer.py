"""The thread that keeps the published metadata fresh.

It calls :meth:`TufRepository.refresh` when the next role reaches half of its
lifetime (and at least every five minutes, so a clock jump or a failed attempt
is retried soon), which re-signs the timestamp -- and snapshot or targets when
they are due -- long before a device would refuse them as expired.
"""

from __future__ import annotations

import logging

from edgefleet_common.background import IntervalThread

from .repository import TufRepository

log = logging.getLogger(__name__)

MAX_SLEEP_S = 300.0
RETRY_S = 60.0


class ResignTimer:
    def __init__(self, repo: TufRepository) -> None:
        self.repo = repo
        self.resigned = 0
        """Refreshes that re-signed something (for tests and logs)."""
        self._thread = IntervalThread(
            "tuf-timer",
            self._refresh,
            interval_s=lambda: RETRY_S,
            log=log,
            failure="TUF re-signing failed; retrying in a minute",
            first_wait_s=0.0,
            retry_s=RETRY_S,
        )

    def start(self) -> None:
        """Restartable: a replica may take the re-signing lease again."""
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop(10)

    def _refresh(self) -> float:
        """Re-sign what is due; the wait until the next role is due (1 s to 5 min)."""
        renewed = self.repo.refresh()
        if renewed:
            self.resigned += 1
            log.info("TUF: re-signed %s", ", ".join(renewed))
        return min(max(self.repo.next_refresh_in(), 1.0), MAX_SLEEP_S)
