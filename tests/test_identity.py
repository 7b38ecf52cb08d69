"""Certificate renewal (proof of possession, key rotation) and MQTT 3.1.1 support."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent.identity import Identity, _csr, _new_key, enroll, renew
from edgefleet_common.mqtt import Endpoint, MqttSession
from edgefleet_contract.errors import EnrollmentError
from fleet_server.server import FleetServer

from .harness import ADMIN_PASSWORD, wait_for


def enrolled(fleet: FleetServer, tmp_path: Path, device_id: str) -> Identity:
    api = fleet.settings.api_url
    token = httpx.post(
        f"{api}/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    ).json()["token"]
    r = httpx.post(
        f"{api}/api/v1/devices",
        json={"id": device_id},
        headers={"Authorization": f"Bearer {token}"},
    )
    return enroll(tmp_path / device_id, api, r.json()["token"])


def test_renewal_rotates_key_and_certificate(fleet: FleetServer, tmp_path: Path) -> None:
    ident = enrolled(fleet, tmp_path, "ren-1")
    old_key, old_cert = ident.key_file.read_bytes(), ident.certificate()
    assert not ident.renewal_due(time.time())
    assert ident.renewal_due(old_cert.not_valid_after_utc.timestamp() - 60)
    new = renew(ident)
    assert new.key_file.read_bytes() != old_key
    assert new.certificate().serial_number != old_cert.serial_number
    assert new.key_file.stat().st_mode & 0o077 == 0
    # the renewed identity really works on the broker
    session = MqttSession("ren-1", Endpoint("127.0.0.1", fleet.settings.broker.port, new.tls()))
    session.start()
    try:
        assert session.wait_connected(10)
    finally:
        session.stop()
    assert fleet.store.get_device("ren-1").cert_serial == new.certificate().serial_number


def test_renewal_needs_proof_of_possession(fleet: FleetServer, tmp_path: Path) -> None:
    ident = enrolled(fleet, tmp_path, "ren-2")
    csr = _csr(_new_key(), "ren-2")
    forged = _new_key().sign(csr, ec.ECDSA(hashes.SHA256()))  # not the certificate's key
    r = httpx.post(
        f"{fleet.settings.api_url}/api/v1/enroll/renew",
        json={
            "cert_pem": ident.cert_file.read_text(),
            "csr_pem": csr.decode(),
            "signature_b64": base64.b64encode(forged).decode(),
        },
    )
    assert r.status_code == 403 and "renewal proof does not verify" in r.json()["detail"]
    fleet.enrollment.revoke("ren-2")
    with pytest.raises(EnrollmentError, match="revoked"):
        renew(ident)


def test_interrupted_rotation_is_completed_on_load(fleet: FleetServer, tmp_path: Path) -> None:
    ident = enrolled(fleet, tmp_path, "ren-3")
    d = ident.directory
    # crash after staging the key only: the old pair stays
    (d / "device.key.new").write_bytes(b"half-written")
    assert Identity.load(tmp_path / "ren-3").key_file.read_bytes() != b"half-written"
    assert not (d / "device.key.new").exists()


def test_mqtt_311_sessions_work(fleet: FleetServer, tmp_path: Path) -> None:
    ident = enrolled(fleet, tmp_path, "v311-1")
    session = MqttSession(
        "v311-1", Endpoint("127.0.0.1", fleet.settings.broker.port, ident.tls(), protocol="3.1.1")
    )
    session.start()
    try:
        assert session.wait_connected(10)
        queued = session.publish_soon(
            "devices/v311-1/status",
            b'{"v":1,"device_id":"v311-1","online":true,"reason":"connected"}',
            retain=True,
        )
        assert queued
        wait_for(lambda: fleet.store.get_device("v311-1").online, what="online via 3.1.1")
    finally:
        session.stop()
