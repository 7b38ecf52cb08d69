"""Device enrollment, certificate renewal and revocation.

* An operator creates a device and gets a one-time token (``{device id}.``
  followed by 256 random bits, expiring); only its SHA-256 is stored.  The id
  prefix lets the device put its own id in the CSR without a second input.
* The device sends the token and a CSR for a key it generated itself; the
  token is consumed atomically and a short-lived client certificate issued.
* Before expiry the device renews: it presents its current certificate, a CSR
  for a *new* key, and a signature over that CSR made with the *current* key
  (proof of possession).  No token is needed and no operator is involved.
  The new certificate supersedes every earlier one of the device: they are
  revoked and put on the CRL at once, so a stolen old key can neither connect
  nor renew again (one valid certificate per device, not a chain per key).
* Revocation marks the device revoked (it can never enroll again), puts all
  its serials on the CRL and hands it to the broker, which then refuses new
  connections and denies an open one every publish and delivery.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from edgefleet_contract.errors import CertificateError, EnrollmentError
from edgefleet_contract.ids import check_device_id, is_device_id

from .pki import FleetCA, check_device_csr, load_cert
from .store.base import EnrollmentStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IssuedToken:
    """A one-time enrollment token, shown once to the operator and never stored."""

    token: str
    expires_at: float


@dataclass(frozen=True)
class IssuedCert:
    """What the enroll and renew routes send back to the device."""

    device_id: str
    cert_pem: str
    ca_pem: str
    not_after: float


def hash_token(token: str) -> str:
    """SHA-256 is enough: tokens carry 256 random bits, so no stretching is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_device_id(token: str) -> str | None:
    """The device id a token names (``ID.SECRET``), or None if it has no such prefix."""
    device_id, dot, secret = token.partition(".")
    return device_id if dot and secret and is_device_id(device_id) else None


class Enrollment:
    """The enrollment service: tokens, first certificates, renewals and revocation.

    I/O-free apart from the store and ``on_revoke`` (which pushes the new CRL
    to the broker); ``clock`` makes expiry testable.
    """

    def __init__(
        self,
        store: EnrollmentStore,
        ca: FleetCA,
        *,
        token_ttl_s: float,
        cert_validity_s: float,
        on_revoke: Callable[[bytes], None] | None = None,
        on_admit: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ca = ca
        self._token_ttl = token_ttl_s
        self._validity = cert_validity_s
        self._on_revoke = on_revoke
        self._on_admit = on_admit
        """Makes a newly certified device's identity and rights effective on the broker."""
        self._clock = clock

    def add_device(self, device_id: str, *, name: str, tags: dict[str, str]) -> IssuedToken:
        """Create the device record and its first token (``StoreError`` if the id is taken).

        The id of a decommissioned device is free: the replacement takes it over, and
        the broker is told, since its ACL denied that id until now.
        """
        try:
            check_device_id(device_id)
        except ValueError as exc:
            raise EnrollmentError(str(exc)) from None
        reused = self._store.create_device(device_id, name=name, tags=tags, now=self._clock())
        if reused and self._on_revoke is not None:
            self._on_revoke(self.crl())
        return self.new_token(device_id)

    def new_token(self, device_id: str) -> IssuedToken:
        """A fresh token for an existing device; any earlier token stops working."""
        if self._store.is_revoked(device_id):
            raise EnrollmentError(f"device {device_id!r} is revoked and cannot enroll again")
        # The device learns its own id from the token: ids never contain '.'.
        token = f"{device_id}.{secrets.token_urlsafe(32)}"
        expires_at = self._clock() + self._token_ttl
        self._store.save_enrollment_token(device_id, hash_token(token), expires_at)
        return IssuedToken(token, expires_at)

    def enroll(self, token: str, csr_pem: bytes) -> IssuedCert:
        """Consume ``token`` and certify the device's key from ``csr_pem``.

        The CSR is checked against the id the token names *before* the token is
        consumed, so a device that sent a broken or misnamed CSR can simply retry
        with a corrected one instead of needing a new token from an operator.
        """
        now = self._clock()
        token = token.strip()
        claimed = token_device_id(token)
        if claimed is None:
            raise EnrollmentError(
                "that is not an enrollment token (expected DEVICE-ID.SECRET as printed by "
                "`fleetctl devices add`); ask an operator for a new one with "
                "`fleetctl devices token ID`"
            )
        check_device_csr(csr_pem, claimed)
        device_id = self._store.take_enrollment_token(hash_token(token), now)
        issued = self._ca.sign_device_csr(csr_pem, device_id, validity_s=self._validity, now=now)
        self._store.add_certificate(device_id, issued.serial, issued.not_after, now)
        if self._on_admit is not None:
            self._on_admit(device_id)
        log.info("enrolled device %s (certificate serial %x)", device_id, issued.serial)
        return IssuedCert(device_id, issued.pem.decode(), self._ca.pem.decode(), issued.not_after)

    def renew(self, cert_pem: bytes, csr_pem: bytes, signature_b64: str) -> IssuedCert:
        """Certify a device's new key, authorised by its current certificate.

        ``signature_b64`` is a signature over the exact CSR bytes made with the
        key of ``cert_pem``: a copied certificate alone (it is public) proves
        nothing.  The new CSR must name the same device.
        """
        now = self._clock()
        revoked = {serial for serial, _ in self._store.revoked_serials()}
        try:
            device_id, _ = self._ca.verify_client_cert(cert_pem, now=now, revoked=revoked)
        except CertificateError as exc:
            raise EnrollmentError(f"cannot renew: {exc}") from None
        if self._store.is_revoked(device_id):
            raise EnrollmentError(f"cannot renew: device {device_id!r} is revoked")
        check_device_csr(csr_pem, device_id)
        if not _proof_verifies(load_cert(cert_pem).public_key(), signature_b64, csr_pem):
            raise EnrollmentError(
                "the renewal proof does not verify: sign the new CSR with the current key"
            )
        issued = self._ca.sign_device_csr(csr_pem, device_id, validity_s=self._validity, now=now)
        self._store.add_certificate(device_id, issued.serial, issued.not_after, now)
        superseded = self._store.supersede_certificates(device_id, issued.serial, now)
        if superseded and self._on_revoke is not None:
            self._on_revoke(self.crl())
        log.info(
            "renewed certificate of %s (serial %x; %d earlier revoked)",
            device_id,
            issued.serial,
            len(superseded),
        )
        return IssuedCert(device_id, issued.pem.decode(), self._ca.pem.decode(), issued.not_after)

    def revoke(self, device_id: str) -> list[int]:
        """Revoke for good; ``on_revoke`` gets the new CRL so the broker enforces it."""
        now = self._clock()
        serials = self._store.revoke_device(device_id, now)
        crl = self.crl()
        if self._on_revoke is not None:
            self._on_revoke(crl)
        log.info("revoked device %s (%d certificates)", device_id, len(serials))
        return serials

    def crl(self) -> bytes:
        """The current CRL (PEM) over every revoked serial."""
        return self._ca.crl_pem(self._store.revoked_serials(), now=self._clock())


def _proof_verifies(key: object, signature_b64: str, data: bytes) -> bool:
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True
