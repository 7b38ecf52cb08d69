"""``fleet-server run --role``: which parts of the server one process runs.

``all`` is the single process of an embedded (SQLite) install.  On PostgreSQL the
same code scales out by role:

* ``api`` -- the REST API and console.  It keeps no state of its own (sessions,
  tokens, login throttles and rate limits are rows in the database), so any number
  of them can sit behind a load balancer.
* ``ingest`` -- the MQTT subscriber and ingest writer.  Ingest workers share one
  MQTT 5 shared subscription (``$share/ingest/devices/+/<channel>``): the broker
  hands each message to exactly one of them, which acknowledges it only after
  its commit, so a killed worker's unacknowledged messages go to another.
* ``worker`` -- the singletons: rollout driver, training runner, TUF re-signer
  and retention, each under its own lease (:mod:`fleet_server.lease`), so each
  runs in exactly one worker at a time and moves to another when that one dies.

Several ``all`` processes on one PostgreSQL database also work: every one serves
the API, shares ingest, and competes for the leases.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, get_args

from edgefleet_contract import topics
from edgefleet_contract.errors import ConfigError
from edgefleet_contract.topics import Channel

from .lease import RETENTION, ROLLOUTS, TRAINING, TUF_RESIGN, Lease, LocalLease, PgLease, Singleton
from .pki import FleetCA, write_private

if TYPE_CHECKING:
    from .federation.runner import TrainingService

SERVER_CERT_VALIDITY_S = 365 * 86400

Role = Literal["all", "api", "ingest", "worker"]
ROLES: tuple[str, ...] = get_args(Role)

SHARE_GROUP = "ingest"
"""The MQTT 5 shared-subscription group every ingest worker joins."""


@dataclass(frozen=True)
class Parts:
    api: bool
    """Serve the REST API and console."""
    ingest: bool
    """Subscribe to the devices' upstream channels and write them to the store."""
    singletons: bool
    """Compete for the leases of the rollout driver, training, TUF re-signing, retention."""


PARTS: dict[str, Parts] = {
    "all": Parts(api=True, ingest=True, singletons=True),
    "api": Parts(api=True, ingest=False, singletons=False),
    "ingest": Parts(api=False, ingest=True, singletons=False),
    "worker": Parts(api=False, ingest=False, singletons=True),
}


def parts_of(role: str) -> Parts:
    try:
        return PARTS[role]
    except KeyError:
        raise ConfigError(f"unknown role {role!r}; one of: {', '.join(ROLES)}") from None


def check_role(role: str, postgres_url: str | None) -> Parts:
    """The parts of ``role``; refuses a split role on SQLite (one process, one host)."""
    parts = parts_of(role)
    if role != "all" and postgres_url is None:
        raise ConfigError(
            f"--role {role} needs a PostgreSQL database shared by every process "
            '([database] url = "postgresql://..." or FLEET_DATABASE__URL); '
            "the embedded SQLite store runs as one process: --role all"
        )
    return parts


def lease_factory(postgres_url: str | None, *, replica: str) -> Callable[[str], Lease]:
    """PostgreSQL advisory-lock leases when the store is PostgreSQL, else in-process ones."""
    if postgres_url is None:
        return LocalLease
    return lambda name: PgLease(name, postgres_url, application=f"fleet-server {replica}")


def subscriptions(parts: Parts, *, shared: bool) -> list[str]:
    """The topic filters a process subscribes to (QoS 1 each).

    Federated-learning frames (``fl/out``) go to the training runner, which lives
    wherever the training lease is held: every singleton-running process subscribes
    to them plainly (a process without the run drops them after its ack).  The rest
    of the upstream channels go to ingest, shared between workers when several
    processes share the store.
    """
    out: list[str] = []
    for channel in sorted(topics.UPSTREAM):
        plain = topics.subscription(channel)
        if channel is Channel.FL_OUT:
            if parts.singletons:
                out.append(plain)
        elif parts.ingest:
            out.append(f"$share/{SHARE_GROUP}/{plain}" if shared else plain)
    return out


def replica_client_cert(ca: FleetCA, data_dir: Path, identity: str) -> tuple[Path, Path]:
    """The MQTT client certificate and key of a replica identity, issued on first use.

    Every replica reads the shared data directory (CA included), so a new replica
    name needs no step of its own beyond being listed in the broker's ACL.
    """
    folder = data_dir / "server" / "replicas" / identity
    cert, key = folder / "client.pem", folder / "client.key"
    if not cert.exists():
        pem, private = ca.issue_client_cert(
            identity, validity_s=SERVER_CERT_VALIDITY_S, now=time.time()
        )
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(key, private)
        cert.write_bytes(pem)
    return cert, key


class Hosted(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


def singletons(
    make_lease: Callable[[str], Lease],
    *,
    rollouts: Hosted,
    training: TrainingService,
    tuf_timer: Hosted,
    retention: Hosted,
    shared: bool,
) -> list[Singleton]:
    """One :class:`Singleton` per lease, in start order (stop them in reverse)."""
    return [
        Singleton(make_lease(ROLLOUTS), rollouts.start, rollouts.stop),
        Singleton(
            make_lease(TRAINING),
            training.host,
            training.unhost,
            tick=training.adopt if shared else None,
        ),
        Singleton(make_lease(TUF_RESIGN), tuf_timer.start, tuf_timer.stop),
        Singleton(make_lease(RETENTION), retention.start, retention.stop),
    ]
