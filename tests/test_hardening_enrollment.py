"""Hardening: a renewal supersedes the old certificate; the enrollment token need not
be on the command line.

Regression tests for the security review of issue 19: each failed before its fix.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def _csr(key: Any, cn: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _tls(folder: Path, name: str, cert_pem: str, key: Any, ca_file: Path) -> Any:
    from edgefleet_common.mqtt import TlsFiles
    from fleet_server.pki import key_pem, write_private

    (folder / f"{name}.crt").write_text(cert_pem)
    write_private(folder / f"{name}.key", key_pem(key))
    return TlsFiles(ca_file, folder / f"{name}.crt", folder / f"{name}.key")


def _mqtt_refused(port: int, tls: Any, client_id: str) -> bool:
    import ssl

    import paho.mqtt.client as paho

    from .harness import Client

    client = Client(tls, client_id)
    try:
        client.client.connect("127.0.0.1", port, keepalive=5)
    except (ssl.SSLError, OSError):
        return True
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if client.client.loop(0.1) != paho.MQTT_ERR_SUCCESS:
                return True
            if client.connack is not None:
                return client.connack != "Success"
        return True
    finally:
        client.client.disconnect()


def test_renewal_revokes_the_previous_certificate_on_the_real_broker(
    fleet: Any, tmp_path: Path
) -> None:
    import base64

    import httpx
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from .harness import admin_token, wait_for

    api = fleet.settings.api_url
    port = fleet.settings.broker.port
    headers = {"Authorization": f"Bearer {admin_token(api)}"}
    token = httpx.post(f"{api}/api/v1/devices", headers=headers, json={"id": "rot-1"}).json()[
        "token"
    ]
    old_key = ec.generate_private_key(ec.SECP256R1())
    first = httpx.post(
        f"{api}/api/v1/enroll", json={"token": token, "csr_pem": _csr(old_key, "rot-1")}
    )
    assert first.status_code == 200, first.text
    old = _tls(tmp_path, "old", first.json()["cert_pem"], old_key, fleet.ca.cert_file)
    assert not _mqtt_refused(port, old, "rot-1")

    def renew_with(cert_pem: str, key: Any) -> tuple[httpx.Response, Any]:
        new_key = ec.generate_private_key(ec.SECP256R1())
        csr = _csr(new_key, "rot-1")
        proof = base64.b64encode(key.sign(csr.encode(), ec.ECDSA(hashes.SHA256()))).decode()
        body = {"cert_pem": cert_pem, "csr_pem": csr, "signature_b64": proof}
        return httpx.post(f"{api}/api/v1/enroll/renew", json=body), new_key

    renewed, new_key = renew_with(first.json()["cert_pem"], old_key)
    assert renewed.status_code == 200, renewed.text
    new = _tls(tmp_path, "new", renewed.json()["cert_pem"], new_key, fleet.ca.cert_file)
    # The broker re-read the CRL: the superseded certificate no longer connects ...
    wait_for(lambda: _mqtt_refused(port, old, "rot-1"), timeout=30, what="old cert refused")
    assert not _mqtt_refused(port, new, "rot-1")
    # ... and it cannot renew again (no chain of certificates from one stolen key).
    again, _ = renew_with(first.json()["cert_pem"], old_key)
    assert again.status_code == 403 and "revoked" in again.json()["detail"]
    rows = fleet.store._conn().execute(
        "SELECT COUNT(*) FROM certificates WHERE device_id = 'rot-1' AND revoked_at IS NULL"
    )
    assert rows.fetchone()[0] == 1


def test_edge_agent_enroll_reads_the_token_from_a_file_or_stdin(fleet: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    import httpx

    from .harness import admin_token

    api = fleet.settings.api_url
    headers = {"Authorization": f"Bearer {admin_token(api)}"}
    agent = str(Path(sys.executable).parent / "edge-agent")

    def token(device: str) -> str:
        r = httpx.post(f"{api}/api/v1/devices", headers=headers, json={"id": device})
        return str(r.json()["token"])

    secret_file = tmp_path / "token"
    secret_file.write_text(token("tf-1") + "\n")
    base = [agent, "enroll", "--server", api]
    done = subprocess.run(
        [*base, "--token-file", str(secret_file), "--data-dir", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "enrolled as tf-1" in done.stdout
    piped = subprocess.run(
        [*base, "--token-file", "-", "--data-dir", str(tmp_path / "b")],
        input=token("tf-2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0 and "enrolled as tf-2" in piped.stdout, piped.stderr
    neither = subprocess.run(
        [*base, "--data-dir", str(tmp_path / "c")], capture_output=True, text=True, timeout=60
    )
    assert neither.returncode == 2 and "--token-file" in neither.stderr
