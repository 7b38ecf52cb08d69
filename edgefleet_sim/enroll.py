"""Identities for a simulated fleet, made by the parent before any worker starts.

Enrollment is REST calls and key generation, not MQTT, so one process does it
for the whole fleet (with a few threads) and the workers only load what it
left on disk.  Identities persist: a later run against the same server reuses
them and enrolls nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fleet_server.fleetctl.client import Client

from .device import ensure_identity


def enroll_all(
    client: Client,
    server_url: str,
    root: Path,
    ids: Sequence[str],
    *,
    tag: str,
    advance: Callable[[int], None],
    halted: threading.Event,
    workers: int = 8,
) -> int:
    """Give every device an identity under ``root/<id>``, enrolling those without one.

    Returns how many enrolled now.  The first failure stops the run with its
    clear message; devices not begun when ``halted`` is set are skipped.
    """
    lock = threading.Lock()
    fresh = 0

    def one(device_id: str) -> None:
        nonlocal fresh
        if halted.is_set():
            return
        now = ensure_identity(client, server_url, device_id, root / device_id, tag=tag)
        with lock:
            fresh += int(now)
        advance(1)

    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(one, d) for d in ids]:
            future.result()
    return fresh
