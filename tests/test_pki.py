"""The fleet CA with real keys: what it issues, what it refuses, and the CRL."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet_contract.errors import CertificateError, EnrollmentError
from fleet_server.config import SERVER_IDENTITY
from fleet_server.pki import FleetCA, common_name, key_usage

NOW = 1_800_000_000.0
DAY = 86400


def csr_for(
    cn: str,
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | None = None,
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, algorithm)
    )
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return FleetCA.create(tmp_path / "ca", now=NOW)


def test_create_then_load_round_trips_and_protects_the_key(ca: FleetCA, tmp_path: Path) -> None:
    key_file = tmp_path / "ca" / "ca.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    loaded = FleetCA.load(tmp_path / "ca")
    assert loaded.cert == ca.cert
    basic = loaded.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0
    with pytest.raises(CertificateError, match="already exists"):
        FleetCA.create(tmp_path / "ca", now=NOW)
    key_file.chmod(0o644)
    with pytest.raises(CertificateError, match="chmod 600"):
        FleetCA.load(tmp_path / "ca")
    with pytest.raises(CertificateError, match="fleet-server init"):
        FleetCA.load(tmp_path / "nowhere")


def test_load_refuses_a_key_that_is_not_the_certificates(tmp_path: Path) -> None:
    FleetCA.create(tmp_path / "a", now=NOW)
    FleetCA.create(tmp_path / "b", now=NOW)
    (tmp_path / "a" / "ca.pem").write_bytes((tmp_path / "b" / "ca.pem").read_bytes())
    with pytest.raises(CertificateError, match="does not belong"):
        FleetCA.load(tmp_path / "a")


def test_device_certificate_has_the_right_shape(ca: FleetCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.sign_device_csr(csr_for("pump-7", key), "pump-7", validity_s=7 * DAY, now=NOW)
    cert = issued.cert
    assert common_name(cert) == "pump-7"
    assert cert.public_key() == key.public_key()
    assert issued.not_after == NOW + 7 * DAY
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    cert.verify_directly_issued_by(ca.cert)
    serials = {
        ca.sign_device_csr(csr_for("pump-7"), "pump-7", validity_s=DAY, now=NOW).serial
        for _ in range(20)
    }
    assert len(serials) == 20 and all(0 < s < 2**128 for s in serials)


def test_ed25519_device_keys_are_accepted(ca: FleetCA) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    issued = ca.sign_device_csr(csr_for("cam-1", key), "cam-1", validity_s=DAY, now=NOW)
    assert issued.cert.public_key() == key.public_key()


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (lambda: csr_for("pump-8"), "must be the device id"),
        (lambda: csr_for("pump-7", rsa.generate_private_key(65537, 2048)), "P-256 or Ed25519"),
        (
            lambda: csr_for("pump-7", ec.generate_private_key(ec.SECP384R1())),
            "P-256 or Ed25519",
        ),
        (lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "not a PEM CSR"),
    ],
    ids=["cn-mismatch", "rsa", "p384", "garbage"],
)
def test_bad_csrs_are_refused_with_a_reason(ca: FleetCA, csr: object, message: str) -> None:
    with pytest.raises(EnrollmentError, match=message):
        ca.sign_device_csr(csr(), "pump-7", validity_s=DAY, now=NOW)  # type: ignore[operator]


def test_a_csr_with_a_broken_self_signature_is_refused(ca: FleetCA) -> None:
    pem = csr_for("pump-7")
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(EnrollmentError, match="signature is invalid"):
        ca.sign_device_csr(tampered, "pump-7", validity_s=DAY, now=NOW)


def test_server_certificate_lists_every_name_and_address(ca: FleetCA) -> None:
    pem, key_pem = ca.issue_server_cert(
        iter(["broker.example", "localhost"]), iter(["127.0.0.1", "::1"]), now=NOW
    )
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert cert.public_key() == key.public_key()
    with pytest.raises(CertificateError, match="not-an-ip"):
        ca.issue_server_cert([], ["not-an-ip"], now=NOW)
    with pytest.raises(CertificateError, match="at least one"):
        ca.issue_server_cert([], [], now=NOW)


def test_verify_client_cert_checks_issuer_validity_revocation_and_kind(
    ca: FleetCA, tmp_path: Path
) -> None:
    issued = ca.sign_device_csr(csr_for("pump-7"), "pump-7", validity_s=DAY, now=NOW)
    assert ca.verify_client_cert(issued.pem, now=NOW + 60) == ("pump-7", issued.serial)
    with pytest.raises(CertificateError, match="expired"):
        ca.verify_client_cert(issued.pem, now=NOW + DAY + 1)
    with pytest.raises(CertificateError, match="not valid yet"):
        ca.verify_client_cert(issued.pem, now=NOW - 3600)
    with pytest.raises(CertificateError, match="revoked"):
        ca.verify_client_cert(issued.pem, now=NOW, revoked={issued.serial})

    other = FleetCA.create(tmp_path / "other", now=NOW)
    foreign = other.sign_device_csr(csr_for("pump-7"), "pump-7", validity_s=DAY, now=NOW)
    with pytest.raises(CertificateError, match="not issued by this fleet"):
        ca.verify_client_cert(foreign.pem, now=NOW)

    server_client, _ = ca.issue_client_cert(SERVER_IDENTITY, validity_s=DAY, now=NOW)
    broker, _ = ca.issue_server_cert(["localhost"], [], now=NOW)
    for not_a_device in (server_client, broker):
        with pytest.raises(CertificateError, match="not a device certificate"):
            ca.verify_client_cert(not_a_device, now=NOW)
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        ca.verify_client_cert(b"junk", now=NOW)


def test_crl_lists_revoked_serials_and_is_signed_by_the_ca(ca: FleetCA) -> None:
    empty = x509.load_pem_x509_crl(ca.crl_pem([], now=NOW))
    assert len(empty) == 0 and empty.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    crl = x509.load_pem_x509_crl(ca.crl_pem([(11, NOW - 10), (2**127 + 5, NOW)], now=NOW))
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.cert.subject
    entry = crl.get_revoked_certificate_by_serial_number(2**127 + 5)
    assert entry is not None and entry.revocation_date_utc.timestamp() == NOW
    assert crl.get_revoked_certificate_by_serial_number(12) is None
    assert crl.next_update_utc is not None and crl.next_update_utc.timestamp() > time.time()


def _granted(cert: x509.Certificate) -> tuple[bool, ...]:
    ext = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ext.critical
    u = ext.value
    return (
        u.digital_signature,
        u.key_cert_sign,
        u.crl_sign,
        u.key_encipherment or u.content_commitment or u.data_encipherment or u.key_agreement,
    )


def test_key_usages_grant_exactly_what_each_certificate_needs(tmp_path: Path) -> None:
    ca = FleetCA.create(tmp_path / "ca", now=NOW)
    assert _granted(ca.cert) == (True, True, True, False)
    leaf, _ = ca.issue_client_cert("pump-8", validity_s=DAY, now=NOW)
    assert _granted(x509.load_pem_x509_certificate(leaf)) == (True, False, False, False)
    with pytest.raises(ValueError, match="sign_everything"):
        key_usage("sign_everything")
