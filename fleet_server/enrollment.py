"""Device enrollment, certificate renewal and revocation.

* An operator creates a device and gets a one-time token (``{device id}.``
  followed by 256 random bits, expiring); only its SHA-256 is stored.  The id
  prefix lets the device put its own id in the CSR without a second input.
* The device sends the token and a CSR for a key it generated itself; the
  token is consumed atomically and a short-lived client certificate issued.
* Before expiry the device renews: it presents its current certificate, a CSR
  for a *new* key, and a signature over that CSR made with the *current* key
  (proof of possession).  No token is needed and no operator is involved.
* Revocation marks the device revoked (it can never enroll again), puts all
  its serials on the CRL and tells the broker, which drops the connection.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from edgefleet_contract.errors import CertificateError, EnrollmentError
from edgefleet_contract.ids import check_device_id

from .pki import FleetCA, common_name

log = logging.getLogger(__name__)


class EnrollmentStore(Protocol):
    def create_device(
        self, device_id: str, *, name: str, tags: dict[str, str], now: float
    ) -> None: ...
    def save_enrollment_token(self, device_id: str, token_hash: str, expires_at: float) -> None: ...
    def take_enrollment_token(self, token_hash: str, now: float) -> str: ...
    def add_certificate(
        self, device_id: str, serial: int, not_after: float, now: float
    ) -> None: ...
    def revoke_device(self, device_id: str, now: float) -> list[int]: ...
    def revoked_serials(self) -> list[tuple[int, float]]: ...
    def is_revoked(self, device_id: str) -> bool: ...


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: float


@dataclass(frozen=True)
class IssuedCert:
    device_id: str
    cert_pem: str
    ca_pem: str
    not_after: float


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Enrollment:
    def __init__(
        self,
        store: EnrollmentStore,
        ca: FleetCA,
        *,
        token_ttl_s: float,
        cert_validity_s: float,
        on_revoke: Callable[[bytes], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ca = ca
        self._token_ttl = token_ttl_s
        self._validity = cert_validity_s
        self._on_revoke = on_revoke
        self._clock = clock

    def add_device(self, device_id: str, *, name: str, tags: dict[str, str]) -> IssuedToken:
        try:
            check_device_id(device_id)
        except ValueError as exc:
            raise EnrollmentError(str(exc)) from None
        self._store.create_device(device_id, name=name, tags=tags, now=self._clock())
        return self.new_token(device_id)

    def new_token(self, device_id: str) -> IssuedToken:
        if self._store.is_revoked(device_id):
            raise EnrollmentError(f"device {device_id!r} is revoked and cannot enroll again")
        # The device learns its own id from the token: ids never contain '.'.
        token = f"{device_id}.{secrets.token_urlsafe(32)}"
        expires_at = self._clock() + self._token_ttl
        self._store.save_enrollment_token(device_id, hash_token(token), expires_at)
        return IssuedToken(token, expires_at)

    def enroll(self, token: str, csr_pem: bytes) -> IssuedCert:
        now = self._clock()
        # A malformed CSR must not burn the token; a CSR for another device name does
        # (that is a misconfigured or hostile device, and the operator should look).
        try:
            if not x509.load_pem_x509_csr(csr_pem).is_signature_valid:
                raise EnrollmentError("the CSR signature is invalid")
        except ValueError:
            raise EnrollmentError("the certificate request is not a PEM CSR") from None
        device_id = self._store.take_enrollment_token(hash_token(token), now)
        issued = self._ca.sign_device_csr(csr_pem, device_id, validity_s=self._validity, now=now)
        self._store.add_certificate(device_id, issued.serial, issued.not_after, now)
        log.info("enrolled device %s (certificate serial %x)", device_id, issued.serial)
        return IssuedCert(device_id, issued.pem.decode(), self._ca.pem.decode(), issued.not_after)

    def renew(self, cert_pem: bytes, csr_pem: bytes, signature_b64: str) -> IssuedCert:
        now = self._clock()
        try:
            current = self._ca.verify_client_cert(cert_pem, now=now)
        except CertificateError as exc:
            raise EnrollmentError(f"cannot renew: {exc}") from None
        device_id = common_name(current)
        if self._store.is_revoked(device_id):
            raise EnrollmentError(f"device {device_id!r} is revoked")
        if current.serial_number in {s for s, _ in self._store.revoked_serials()}:
            raise EnrollmentError("that certificate is revoked")
        try:
            signature = base64.b64decode(signature_b64, validate=True)
            key = current.public_key()
            if isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, csr_pem, ec.ECDSA(hashes.SHA256()))
            elif isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, csr_pem)
            else:
                raise InvalidSignature
        except (InvalidSignature, ValueError):
            raise EnrollmentError(
                "the renewal proof does not verify: sign the new CSR with the current key"
            ) from None
        issued = self._ca.sign_device_csr(csr_pem, device_id, validity_s=self._validity, now=now)
        self._store.add_certificate(device_id, issued.serial, issued.not_after, now)
        log.info("renewed certificate of %s (serial %x)", device_id, issued.serial)
        return IssuedCert(device_id, issued.pem.decode(), self._ca.pem.decode(), issued.not_after)

    def revoke(self, device_id: str) -> list[int]:
        now = self._clock()
        serials = self._store.revoke_device(device_id, now)
        crl = self.crl()
        if self._on_revoke is not None:
            self._on_revoke(crl)
        log.info("revoked device %s (%d certificates)", device_id, len(serials))
        return serials

    def crl(self) -> bytes:
        return self._ca.crl_pem(self._store.revoked_serials(), now=self._clock())
