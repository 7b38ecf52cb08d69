"""The device's identity: its private key, certificate and enrollment record.

The private key is generated here and never leaves the device (mode 0600).
Enrollment sends only a CSR; renewal sends a CSR for a *new* key plus a
signature over it made with the current key, so the server knows the request
comes from the holder of the certificate being renewed.

Files in ``<data_dir>/identity/``: ``device.key``, ``device.pem``, ``ca.pem``,
``enrollment.json`` (device id, server URL, broker address).
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet_common.mqtt import TlsFiles
from edgefleet_common.private import private_dir
from edgefleet_contract.errors import CertificateError, EnrollmentError, IdentityError, TrustError
from edgefleet_contract.ids import is_device_id

from .certinfo import validity

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography is imported where keys and CSRs are made (enroll, renew), not at module
# level: the running daemon only needs the validity dates (agent/certinfo.py).

RENEW_AT_FRACTION = 2 / 3


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _checked_cert(doc: dict[str, object], key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    """The issued certificate, after checking it certifies *our* key for *our* id.

    Persisting a certificate that does not match the key would leave the device
    unable to connect until someone re-enrolls it by hand.
    """
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    pem = str(doc.get("cert_pem", "")).encode()
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise EnrollmentError("the server's answer holds no readable certificate") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != device_id or doc.get("device_id") != device_id:
        raise EnrollmentError(
            f"the server issued a certificate for another device than {device_id!r}"
        )
    if cert.public_key() != key.public_key():
        raise EnrollmentError("the server's certificate is not for this device's key")
    return pem


def device_id_from_token(token: str) -> str:
    device_id, dot, secret = token.strip().partition(".")
    if not dot or not secret or not is_device_id(device_id):
        raise EnrollmentError(
            "that does not look like an enrollment token (expected DEVICE-ID.SECRET, as printed "
            "by `fleetctl devices add`)"
        )
    return device_id


@dataclass(frozen=True)
class Identity:
    """An enrolled device: where its files are and where its server and broker live."""

    directory: Path
    device_id: str
    server_url: str
    broker_host: str
    broker_port: int

    @property
    def key_file(self) -> Path:
        return self.directory / "device.key"

    @property
    def cert_file(self) -> Path:
        return self.directory / "device.pem"

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def tls(self) -> TlsFiles:
        return TlsFiles(self.ca_file, self.cert_file, self.key_file)

    def certificate(self) -> x509.Certificate:
        from cryptography import x509

        try:
            return x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise CertificateError(f"cannot read {self.cert_file}: {exc}") from None

    @property
    def not_after(self) -> float:
        return validity(self.cert_file)[1]

    def renewal_due(self, now: float) -> bool:
        """True from 2/3 of the validity on: leaves a third for retries while offline."""
        start, end = validity(self.cert_file)
        return now >= start + (end - start) * RENEW_AT_FRACTION

    @classmethod
    def load(cls, data_dir: Path) -> Identity:
        directory = data_dir / "identity"
        record = directory / "enrollment.json"
        if directory.exists():
            _finish_rotation(directory)
        if not record.exists():
            raise IdentityError(
                f"this device is not enrolled (no {record}); run "
                "`edge-agent enroll --server URL --token TOKEN`"
            )
        try:
            doc = json.loads(record.read_text())
            return cls(
                directory,
                doc["device_id"],
                doc["server_url"],
                doc["broker_host"],
                int(doc["broker_port"]),
            )
        except (ValueError, KeyError) as exc:
            raise IdentityError(f"{record} is damaged ({exc}); enroll again") from None


def _post(url: str, body: dict[str, str], timeout: float) -> dict[str, object]:
    import httpx  # only enrollment and renewal talk HTTP; it costs ~10 MB resident

    try:
        response = httpx.post(url, json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        raise EnrollmentError(f"cannot reach the fleet server at {url}: {exc}") from None
    try:
        doc = response.json()
    except ValueError:
        doc = {}
    if response.status_code >= 400:
        detail = doc.get("detail") if isinstance(doc, dict) else None
        raise EnrollmentError(str(detail or f"the server answered {response.status_code}"))
    if not isinstance(doc, dict):
        raise EnrollmentError("the server's answer is not a JSON object")
    return doc


def enroll(
    data_dir: Path, server_url: str, token: str, *, force: bool = False, timeout: float = 30.0
) -> Identity:
    """Make a key here, trade the token and a CSR for a certificate, and save all of it.

    Nothing is written until the server has answered, so a refused enrollment
    leaves an existing identity untouched.
    """
    directory = data_dir / "identity"
    if (directory / "enrollment.json").exists() and not force:
        raise EnrollmentError(
            f"this device is already enrolled ({directory}); use --force to replace its identity"
        )
    device_id = device_id_from_token(token)
    private_dir(data_dir)
    private_dir(directory)
    key = _new_key()
    doc = _post(
        server_url.rstrip("/") + "/api/v1/enroll",
        {"token": token.strip(), "csr_pem": _csr(key, device_id).decode()},
        timeout,
    )
    cert = _checked_cert(doc, key, device_id)
    broker_host, broker_port = doc.get("broker_host"), doc.get("broker_port")
    if not isinstance(broker_host, str) or not isinstance(broker_port, int):
        raise EnrollmentError("the server's answer holds no broker address")
    identity = save_identity(
        data_dir,
        device_id=device_id,
        server_url=server_url.rstrip("/"),
        broker_host=broker_host,
        broker_port=broker_port,
        key_pem=_key_pem(key),
        cert_pem=cert,
        ca_pem=str(doc["ca_pem"]).encode(),
    )
    if isinstance(doc.get("tuf_root"), str):
        # The trust anchor for signed updates: the device verifies every later root
        # and every artifact against the chain that starts here.
        from .updates.trust import save_root

        try:
            save_root(data_dir, str(doc["tuf_root"]))
        except TrustError as exc:
            raise EnrollmentError(
                f"enrolled, but cannot keep the update trust root: {exc}"
            ) from exc
    return identity


def save_identity(
    data_dir: Path,
    *,
    device_id: str,
    server_url: str,
    broker_host: str,
    broker_port: int,
    key_pem: bytes,
    cert_pem: bytes,
    ca_pem: bytes,
) -> Identity:
    """Write an enrolled identity under ``data_dir``; return it as :meth:`Identity.load` reads it.

    The key is readable by its owner only, and the enrollment record is written
    last: a crash part-way leaves a device that is not enrolled, never a record
    without its key.  Tests and benchmarks lay out devices from a lab CA with it.
    """
    directory = data_dir / "identity"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(directory / "device.key", key_pem, 0o600)
    _write(directory / "device.pem", cert_pem)
    _write(directory / "ca.pem", ca_pem)
    record = {
        "device_id": device_id,
        "server_url": server_url,
        "broker_host": broker_host,
        "broker_port": broker_port,
        "enrolled_at": time.time(),
    }
    _write(directory / "enrollment.json", json.dumps(record, indent=2).encode())
    return Identity.load(data_dir)


def renew(identity: Identity, *, timeout: float = 30.0) -> Identity:
    """Get a fresh certificate for a fresh key, proving possession of the current one."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    current = serialization.load_pem_private_key(identity.key_file.read_bytes(), password=None)
    if not isinstance(current, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{identity.key_file} is not an EC key")
    key = _new_key()
    csr = _csr(key, identity.device_id)
    proof = current.sign(csr, ec.ECDSA(hashes.SHA256()))
    doc = _post(
        identity.server_url + "/api/v1/enroll/renew",
        {
            "cert_pem": identity.cert_file.read_text(),
            "csr_pem": csr.decode(),
            "signature_b64": base64.b64encode(proof).decode(),
        },
        timeout,
    )
    # Stage the new pair completely, then swap key and certificate.  A crash at any
    # point leaves either the old pair or a staged new pair that `load` completes,
    # never a key that does not match its certificate.
    cert = _checked_cert(doc, key, identity.device_id)
    directory = identity.directory
    _write(directory / "ca.pem", str(doc["ca_pem"]).encode())
    _write(directory / "device.key.new", _key_pem(key), 0o600)
    _write(directory / "device.pem.new", cert)
    _finish_rotation(directory)
    return Identity.load(directory.parent)


def _finish_rotation(directory: Path) -> None:
    key_new, cert_new = directory / "device.key.new", directory / "device.pem.new"
    if key_new.exists() and not cert_new.exists():
        key_new.unlink()  # crashed while staging: the old pair is intact
        return
    if key_new.exists():
        os.replace(key_new, directory / "device.key")
    if cert_new.exists():
        os.replace(cert_new, directory / "device.pem")
