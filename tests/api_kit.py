"""The REST API on a real store and CA, without a server: what the API tests share.

The store holds three users, one per role, each with the password ``NAME-password``:
``alice`` (admin), ``olga`` (operator) and ``vic`` (viewer).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from edgefleet_contract.messages import Command
from fleet_server.api import ApiContext
from fleet_server.auth import hash_password
from fleet_server.config import ApiSettings, ServerSettings
from fleet_server.enrollment import Enrollment
from fleet_server.pki import FleetCA
from fleet_server.store import open_store
from fleet_server.store.base import Role, Store

USERS: list[tuple[str, Role]] = [("alice", "admin"), ("olga", "operator"), ("vic", "viewer")]


class Outbox:
    """Stands in for the MQTT link (the end-to-end tests use the real one)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Command]] = []

    def send_command(self, device_id: str, command: Command) -> None:
        self.sent.append((device_id, command))


def store_with_users(folder: Path, *, now: float | None = None) -> Store:
    """A new store in ``folder`` holding :data:`USERS`, created at ``now`` (default: now)."""
    store = open_store(folder / "fleet.db")
    created = time.time() if now is None else now
    for name, role in USERS:
        store.create_user(
            name, role=role, password_hash=hash_password(f"{name}-password"), now=created
        )
    return store


def api_context(
    folder: Path,
    store: Store,
    *,
    api: ApiSettings | None = None,
    token_ttl_s: int = 600,
    **parts: Any,
) -> ApiContext:
    """The API's context on ``store`` with a new CA in ``folder`` and real enrollment;
    ``parts`` are the other services (commands, rollouts, ...)."""
    ca = FleetCA.create(folder / "ca", now=time.time())
    return ApiContext(
        settings=ServerSettings(data_dir=folder, api=api or ApiSettings()),
        store=store,
        enrollment=Enrollment(store, ca, token_ttl_s=token_ttl_s, cert_validity_s=3600),
        **parts,
    )


def login(client: TestClient, user: str, **extra: Any) -> dict[str, str]:
    """The bearer header of ``user`` logged in with its password (and ``extra`` fields)."""
    r = client.post(
        "/api/v1/auth/login", json={"username": user, "password": f"{user}-password", **extra}
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def audit_log(
    client: TestClient, headers: dict[str, str], **params: Any
) -> tuple[list[dict[str, Any]], set[tuple[str, str, str]]]:
    """The audit entries the API shows ``headers``' user, and who did what with which
    outcome in them: the triples the tests look for."""
    entries: list[dict[str, Any]] = client.get(
        "/api/v1/audit", headers=headers, params=params
    ).json()["items"]
    return entries, {(e["actor"], e["action"], e["outcome"]) for e in entries}
