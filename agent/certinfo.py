"""The validity window of the device certificate, read without the cryptography package.

The daemon checks its certificate's expiry every minute and reports it in its
state; importing ``cryptography`` just for that costs ~9 MB resident on every
board for the whole life of the process.  X.509 puts the validity at a fixed
place (``Certificate -> tbsCertificate -> [version], serial, signature, issuer,
validity``), so a few lines of DER walking read it; the full library is loaded
only when a renewal really happens.  The certificate was verified by the TLS
handshake and written by us, so this is a reader for a trusted file, not a
validator, but it still refuses anything malformed rather than guessing.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import re
from pathlib import Path

from edgefleet_contract.errors import CertificateError

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


def validity(path: Path) -> tuple[float, float]:
    """``(not_before, not_after)`` as UNIX timestamps of the first certificate in ``path``."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return validity_der(_der(pem))
    except (ValueError, IndexError) as exc:
        raise CertificateError(f"cannot read {path}: not a valid certificate ({exc})") from None


def _der(pem: bytes) -> bytes:
    match = _PEM.search(pem)
    if match is None:
        raise ValueError("no PEM certificate block")
    try:
        return base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64: {exc}") from None


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the element at ``pos``."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, pos, end


def validity_der(der: bytes) -> tuple[float, float]:
    tag, start, _ = _tlv(der, 0)  # Certificate
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, pos, _ = _tlv(der, start)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("no tbsCertificate")
    tag, _, end = _tlv(der, pos)
    if tag == 0xA0:  # [0] version
        pos = end
    for _ in range(3):  # serialNumber, signature, issuer
        _, _, pos = _tlv(der, pos)
    tag, pos, _ = _tlv(der, pos)  # validity
    if tag != 0x30:
        raise ValueError("no validity")
    times = []
    for _ in range(2):
        tag, start, end = _tlv(der, pos)
        times.append(_time(tag, der[start:end].decode("ascii")))
        pos = end
    return times[0], times[1]


def _time(tag: int, text: str) -> float:
    if not text.endswith("Z"):
        raise ValueError("certificate times must be UTC")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ
        year = int(text[:2])
        year += 2000 if year < 50 else 1900
        rest = text[2:]
    elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        year, rest = int(text[:4]), text[4:]
    else:
        raise ValueError(f"unexpected time tag {tag:#x}")
    month, day, hour, minute, second = (int(rest[i : i + 2]) for i in range(0, 10, 2))
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
