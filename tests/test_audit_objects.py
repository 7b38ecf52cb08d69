"""Audit entries name their object (``device:cam-1``, ``user:ana``) and a refusal's reason,
and can be filtered by action, object, outcome and time, in the API and in fleetctl."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from fleet_server.server import FleetServer

from .fleetctl_kit import fleetctl, login_admin
from .harness import admin_token


def test_entries_name_objects_and_reasons_and_filter(
    fleet: FleetServer, fleetctl_config: Path
) -> None:
    api = fleet.settings.api_url
    headers = {"Authorization": f"Bearer {admin_token(api)}"}
    started = time.time()

    def call(method: str, path: str, body: object = None) -> httpx.Response:
        return httpx.request(method, f"{api}/api/v1{path}", headers=headers, json=body)

    assert call("POST", "/devices", {"id": "aud-1"}).status_code == 201
    assert call("PATCH", "/devices/aud-1", {"tags": {"site": "lab"}}).is_success
    assert call("POST", "/devices", {"id": "aud-1"}).status_code == 409  # already there
    new_user = {"username": "ana", "role": "viewer", "password": "ana-password-1"}
    assert call("POST", "/users", new_user).status_code == 201

    def audit(**params: object) -> list[dict[str, object]]:
        r = httpx.get(f"{api}/api/v1/audit", headers=headers, params={"limit": 100, **params})
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    about = audit(object="device:aud-1")
    assert [(e["action"], e["outcome"]) for e in about] == [
        ("create_device", "failed"),
        ("patch_device", "ok"),
        ("create_device", "ok"),
    ]
    assert all(e["target"] == "device:aud-1" for e in about)
    failed = about[0]
    assert "aud-1" in str(failed["detail"]["reason"])  # type: ignore[index]
    assert [e["target"] for e in audit(action="create_user")] == ["user:ana"]
    assert [e["action"] for e in audit(outcome="failed")] == ["create_device"]
    assert audit(since=time.time() + 60) == []
    assert len(audit(since=started - 1, until=time.time() + 1, object="aud-1")) == 3
    bad = httpx.get(f"{api}/api/v1/audit", headers=headers, params={"outcome": "maybe"})
    assert bad.status_code == 422

    login_admin(api)
    code, out, err = fleetctl(["audit", "--object", "device:aud-1", "--outcome", "failed"])
    assert code == 0, err
    header, row = out.splitlines()[1:3]  # after the title
    assert header.split()[:4] == ["WHEN", "WHO", "ACTION", "OBJECT"]
    assert "device:aud-1" in row and "failed" in row and "already" in row
    code, out, _ = fleetctl(["audit", "--action", "create_user", "--since", "1h", "-o", "json"])
    assert [e["target"] for e in json.loads(out)["items"]] == ["user:ana"]
