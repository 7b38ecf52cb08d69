"""``fleetctl devices delete``: revoke, keep the history, free the id for a replacement."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cryptography import x509

from fleet_server.server import FleetServer
from fleet_server.store.base import CommandRecord

from .fleetctl_kit import fleetctl, login_admin


def test_decommission_keeps_history_and_frees_the_id(
    fleet: FleetServer, fleetctl_config: Path
) -> None:
    login_admin(fleet.settings.api_url)
    assert fleetctl(["devices", "add", "old-1", "--tag", "site=lab"])[0] == 0
    store = fleet.store
    cert, _ = fleet.ca.issue_client_cert("old-1", validity_s=3600, now=time.time())
    serial = x509.load_pem_x509_certificate(cert).serial_number
    store.add_certificate("old-1", serial, time.time() + 3600, time.time())
    store.add_command(
        CommandRecord(
            id="c-old",
            device_id="old-1",
            name="ping",
            args={},
            created_at=time.time(),
            actor="admin",
        )
    )
    code, out, _ = fleetctl(["devices", "delete", "old-1"], "n\n")
    assert code == 0 and "old-1 not decommissioned" in out
    assert store.get_device("old-1").state == "enrolled"

    code, out, err = fleetctl(["devices", "delete", "old-1", "--yes"])
    assert code == 0, err
    assert "old-1 decommissioned" in out
    assert store.get_device("old-1").state == "decommissioned"
    crl = x509.load_pem_x509_crl(fleet.enrollment.crl())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert "user old-1\ntopic deny devices/#" in fleet.layout.broker.acl.read_text()

    # The id is free: a replacement gets it, with a token, and the history stays.
    code, out, err = fleetctl(["devices", "add", "old-1", "--tag", "site=dock"])
    assert code == 0, err
    assert "enrollment token" in out
    again = store.get_device("old-1")
    assert again.state == "pending" and again.tags == {"site": "dock"}
    assert [c.id for c in store.list_commands("old-1")] == ["c-old"]
    crl = x509.load_pem_x509_crl(fleet.enrollment.crl())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None  # old cert stays out
    assert "user old-1\n" not in fleet.layout.broker.acl.read_text()  # the new one may connect
    code, out, _ = fleetctl(["--json", "audit", "--object", "device:old-1"])
    actions = [e["action"] for e in json.loads(out)["items"]]
    assert actions[:2] == ["create_device", "decommission"]

    code, _, err = fleetctl(["devices", "add", "old-1"])
    assert code == 1 and "already exists" in err  # a live device's id is not free
