"""The fleet CA: device, broker and server certificates, CSR signing and the CRL.

ECDSA P-256 everywhere: every MQTT broker and TLS stack speaks it, and keys
are small enough for constrained devices.  Device keys are generated on the
device; the CA only ever sees CSRs.  Device certificates are short-lived
(days) and renewed by the agent, so a stolen device certificate expires on
its own; revocation puts serials on a CRL the broker enforces.

All functions take ``now`` so expiry is testable without sleeping.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet_contract.errors import CertificateError, EnrollmentError
from edgefleet_contract.ids import is_device_id

CA_VALIDITY_S = 10 * 365 * 86400
SERVER_VALIDITY_S = 825 * 86400


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def _serial() -> int:
    """128 random bits: unguessable, so a CA compromise cannot be staged by serial."""
    return secrets.randbits(128) or 1


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    """Write a non-secret file (certificates, CRLs) atomically, readable by all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


_KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def key_usage(*granted: str) -> x509.KeyUsage:
    """The KeyUsage extension granting exactly ``granted`` (x509 wants every flag named)."""
    unknown = set(granted) - set(_KEY_USAGES)
    if unknown:
        raise ValueError(f"unknown key usage(s): {sorted(unknown)}")
    return x509.KeyUsage(**{name: name in granted for name in _KEY_USAGES})


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8: the file mode, not a passphrase, protects keys at rest."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    """Parse one PEM certificate; garbage becomes a ``CertificateError``."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate: {exc}") from None


def common_name(cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    """The subject CN, or ``""``: device certificates carry the device id there."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


@dataclass(frozen=True)
class Issued:
    """A freshly signed device certificate with the fields the store records."""

    cert: x509.Certificate

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def not_after(self) -> float:
        return self.cert.not_valid_after_utc.timestamp()

    @property
    def pem(self) -> bytes:
        return cert_pem(self.cert)


class FleetCA:
    """The CA key and certificate in ``directory`` (``ca.key`` 0600, ``ca.pem``)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, directory: Path):
        self._key = key
        self.cert = cert
        self.directory = directory

    @property
    def cert_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def pem(self) -> bytes:
        return cert_pem(self.cert)

    @classmethod
    def create(cls, directory: Path, *, name: str = "edgefleet fleet CA", now: float) -> FleetCA:
        if (directory / "ca.key").exists():
            raise CertificateError(f"a CA already exists in {directory}; refusing to replace it")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(_utc(now - 300))
            .not_valid_after(_utc(now + CA_VALIDITY_S))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                key_usage("digital_signature", "key_cert_sign", "crl_sign"),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(directory / "ca.key", key_pem(key))
        write_public(directory / "ca.pem", cert_pem(cert))
        return cls(key, cert, directory)

    @classmethod
    def load(cls, directory: Path) -> FleetCA:
        key_file = directory / "ca.key"
        try:
            mode = key_file.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise CertificateError(
                    f"{key_file} is readable by other users; run: chmod 600 {key_file}"
                )
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        except FileNotFoundError:
            raise CertificateError(
                f"no fleet CA in {directory}; run `fleet-server init` first"
            ) from None
        except ValueError as exc:
            raise CertificateError(f"the fleet CA in {directory} is unreadable: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError(f"{key_file} is not an EC key")
        if key.public_key() != cert.public_key():
            raise CertificateError(f"{key_file} does not belong to {directory / 'ca.pem'}")
        return cls(key, cert, directory)

    # ------------------------------------------------------------ issuing --

    def _builder(
        self,
        subject_cn: str,
        public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
        *,
        validity_s: float,
        now: float,
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(_utc(now - 300))
            .not_valid_after(_utc(now + validity_s))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                key_usage("digital_signature"),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

    def issue_server_cert(
        self, hosts: Iterable[str], ips: Iterable[str], *, now: float
    ) -> tuple[bytes, bytes]:
        """A TLS server certificate for the broker; returns ``(cert_pem, key_pem)``.

        Clients match the host they dialled against the SAN only (the CN is ignored),
        so every name and address devices use must be listed, ``127.0.0.1`` included
        when they connect by IP.
        """
        host_list, ip_list = list(hosts), list(ips)
        try:
            addresses = [ipaddress.ip_address(ip) for ip in ip_list]
        except ValueError as exc:
            raise CertificateError(f"broker certificate: {exc}") from None
        if not host_list and not addresses:
            raise CertificateError("the broker certificate needs at least one host name or IP")
        names: list[x509.GeneralName] = [x509.DNSName(h) for h in host_list]
        names += [x509.IPAddress(a) for a in addresses]
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._builder(
                host_list[0] if host_list else str(addresses[0]),
                key.public_key(),
                validity_s=SERVER_VALIDITY_S,
                now=now,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return cert_pem(cert), key_pem(key)

    def issue_client_cert(self, cn: str, *, validity_s: float, now: float) -> tuple[bytes, bytes]:
        """A client certificate with a key made here (the server's own identity, tests)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._builder(cn, key.public_key(), validity_s=validity_s, now=now)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return cert_pem(cert), key_pem(key)

    def sign_device_csr(
        self, csr_pem: bytes, device_id: str, *, validity_s: float, now: float
    ) -> Issued:
        """Sign a device's CSR after checking it proves its key and names the right device."""
        public_key = check_device_csr(csr_pem, device_id)
        cert = (
            self._builder(device_id, public_key, validity_s=validity_s, now=now)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return Issued(cert)

    # ------------------------------------------------------------ checking --

    def verify_client_cert(
        self, pem: bytes, *, now: float, revoked: Collection[int] = ()
    ) -> tuple[str, int]:
        """Check a presented client certificate; returns ``(device_id, serial)``.

        It must be signed by this CA, be a client certificate for a well-formed
        device id, be inside its validity window and not be in ``revoked``.
        Raises ``CertificateError`` saying which check failed.
        """
        cert = load_cert(pem)
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            raise CertificateError("the certificate was not issued by this fleet's CA") from None
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = x509.ExtendedKeyUsage([])
        device_id = common_name(cert)
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages or not is_device_id(device_id):
            raise CertificateError("the certificate is not a device certificate")
        if now < cert.not_valid_before_utc.timestamp():
            raise CertificateError("the certificate is not valid yet; check the device's clock")
        if now > cert.not_valid_after_utc.timestamp():
            raise CertificateError(
                f"the certificate of {device_id!r} has expired; "
                f"enroll it again with a new token (`fleetctl devices token {device_id}`)"
            )
        if cert.serial_number in revoked:
            raise CertificateError(f"the certificate of {device_id!r} is revoked")
        return device_id, cert.serial_number

    def crl_pem(self, revoked: Iterable[tuple[int, float]], *, now: float) -> bytes:
        """A CRL listing ``(serial, revoked_at)``.

        It is re-issued on every change, so a long ``next_update`` is harmless and
        keeps OpenSSL from refusing every client if the server is down for a while.
        """
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(_utc(now - 60))
            .next_update(_utc(now + 365 * 86400))
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(_utc(when))
                .build()
            )
        return builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def check_device_csr(
    csr_pem: bytes, device_id: str
) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
    """Validate a device CSR without signing it; returns its public key.

    Separate from signing so enrollment can refuse a bad CSR *before* it
    consumes the one-time token.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise EnrollmentError("the certificate request is not a PEM CSR") from None
    if not csr.is_signature_valid:
        raise EnrollmentError("the CSR signature is invalid (it must be signed by its own key)")
    cn = common_name(csr)
    if cn != device_id:
        raise EnrollmentError(
            f"the CSR names {cn!r} but this enrollment is for device {device_id!r}; "
            "the CSR's common name must be the device id"
        )
    public_key = csr.public_key()
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        return public_key
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return public_key
    raise EnrollmentError("only EC P-256 or Ed25519 device keys are accepted")
