"""A process that holds one PostgreSQL lease until it is killed (for the kill -9 tests).

    python -m tests.lease_holder NAME DSN

Prints ``holding <pid>`` once its work started, then waits; it never lets go by
itself, so only its death (``kill -9``) can free the lease.
"""

from __future__ import annotations

import os
import sys
import threading

from fleet_server.lease import PgLease, Singleton


def main() -> None:
    name, dsn = sys.argv[1], sys.argv[2]
    forever = threading.Event()
    singleton = Singleton(
        PgLease(name, dsn),
        start=lambda: print(f"holding {os.getpid()}", flush=True),
        stop=lambda: print("lost", flush=True),
        interval_s=0.2,
    )
    singleton.start()
    forever.wait()


if __name__ == "__main__":
    main()
