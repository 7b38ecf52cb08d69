"""The daemon's cryptography-free reading of its certificate's validity."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.certinfo import validity, validity_der
from edgefleet_contract.errors import CertificateError

from .harness import Pki


@pytest.mark.parametrize("lifetime", [60.0, 86400 * 3, 86400 * 365 * 60])  # 60 y: GeneralizedTime
def test_matches_the_cryptography_package(pki: Pki, lifetime: float) -> None:
    tls = pki.identity(f"cert-{int(lifetime)}", validity_s=lifetime)
    assert tls.cert_file is not None
    cert = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
    assert validity(tls.cert_file) == (
        cert.not_valid_before_utc.timestamp(),
        cert.not_valid_after_utc.timestamp(),
    )
    assert validity(tls.cert_file)[1] > time.time()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello",
        b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
    ],
)
def test_garbage_is_a_certificate_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "device.pem"
    path.write_bytes(content)
    with pytest.raises(CertificateError, match=r"device\.pem"):
        validity(path)
    with pytest.raises(CertificateError, match="cannot read"):
        validity(tmp_path / "missing.pem")


def test_truncated_der_is_refused(pki: Pki) -> None:
    tls = pki.identity("cert-trunc")
    assert tls.cert_file is not None
    der = x509.load_pem_x509_certificate(tls.cert_file.read_bytes()).public_bytes(Encoding.DER)
    for cut in (5, 40, 120):
        with pytest.raises((ValueError, IndexError)):
            validity_der(der[:cut])
