"""The enrollment service against a real CA, over the real SQLite store and a small
in-memory one.

The in-memory store follows the ``EnrollmentStore`` contract (atomic token take, errors
for unknown/used/expired tokens and revoked devices) and lets a test look inside; every
test that does not need to look inside runs over the real SQLite store as well, so a
rule the service leaves to the store (a new token voids the old one) is proved there.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from edgefleet_contract.errors import EnrollmentError, StoreError
from fleet_server.enrollment import Enrollment, hash_token, token_device_id
from fleet_server.pki import FleetCA
from fleet_server.store import open_store

DAY = 86400.0


@dataclass
class _Device:
    revoked_at: float | None = None
    serials: list[int] = field(default_factory=list)
    superseded: dict[int, float] = field(default_factory=dict)


@dataclass
class MemoryStore:
    devices: dict[str, _Device] = field(default_factory=dict)
    tokens: dict[str, tuple[str, float, bool]] = field(default_factory=dict)

    def create_device(self, device_id: str, *, name: str, tags: dict[str, str], now: float) -> None:
        if device_id in self.devices:
            raise StoreError(f"device {device_id!r} already exists")
        self.devices[device_id] = _Device()

    def save_enrollment_token(self, device_id: str, token_hash: str, expires_at: float) -> None:
        self.tokens = {h: t for h, t in self.tokens.items() if t[0] != device_id}
        self.tokens[token_hash] = (device_id, expires_at, False)

    def take_enrollment_token(self, token_hash: str, now: float) -> str:
        if token_hash not in self.tokens:
            raise EnrollmentError("unknown enrollment token")
        device_id, expires_at, used = self.tokens[token_hash]
        if self.is_revoked(device_id):
            raise EnrollmentError(f"device {device_id!r} is revoked and cannot enroll again")
        if used:
            raise EnrollmentError("enrollment token already used")
        if now > expires_at:
            raise EnrollmentError("enrollment token expired")
        self.tokens[token_hash] = (device_id, expires_at, True)
        return device_id

    def add_certificate(self, device_id: str, serial: int, not_after: float, now: float) -> None:
        self.devices[device_id].serials.append(serial)

    def revoke_device(self, device_id: str, now: float) -> list[int]:
        self.devices[device_id].revoked_at = now
        return list(self.devices[device_id].serials)

    def supersede_certificates(self, device_id: str, keep: int, now: float) -> list[int]:
        d = self.devices[device_id]
        gone = [s for s in d.serials if s != keep and s not in d.superseded]
        d.superseded.update((s, now) for s in gone)
        return gone

    def revoked_serials(self) -> list[tuple[int, float]]:
        devices = self.devices.values()
        whole = [(s, d.revoked_at) for d in devices if d.revoked_at for s in d.serials]
        return whole + [(s, t) for d in self.devices.values() for s, t in d.superseded.items()]

    def is_revoked(self, device_id: str) -> bool:
        return self.devices[device_id].revoked_at is not None


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr(key: ec.EllipticCurvePrivateKey, cn: str) -> bytes:
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


def proof(key: ec.EllipticCurvePrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


@dataclass
class Rig:
    service: Enrollment
    store: Any
    clock: Clock
    crls: list[bytes]


@pytest.fixture(params=["memory", "sqlite"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Rig:
    """The service over either store (the SQLite one is the server's own)."""
    store = MemoryStore() if request.param == "memory" else open_store(tmp_path / "fleet.db")
    return make_rig(tmp_path, store)


@pytest.fixture
def memory_rig(tmp_path: Path) -> Rig:
    """The service over the in-memory store, for tests that look inside it."""
    return make_rig(tmp_path, MemoryStore())


def make_rig(tmp_path: Path, store: Any) -> Rig:
    clock = Clock()
    crls: list[bytes] = []
    ca = FleetCA.create(tmp_path / "ca", now=clock.now - DAY)
    service = Enrollment(
        store,
        ca,
        token_ttl_s=DAY,
        cert_validity_s=7 * DAY,
        on_revoke=crls.append,
        clock=clock,
    )
    return Rig(service, store, clock, crls)


def test_token_enrolls_once_and_only_its_hash_is_stored(memory_rig: Rig) -> None:
    rig = memory_rig
    issued = rig.service.add_device("pump-7", name="Pump 7", tags={"site": "berlin"})
    assert issued.token.startswith("pump-7.") and len(issued.token) > 40
    assert issued.expires_at == rig.clock.now + DAY
    assert list(rig.store.tokens) == [hash_token(issued.token)]
    assert issued.token not in repr(rig.store)

    key = new_key()
    cert = rig.service.enroll(issued.token, csr(key, "pump-7"))
    parsed = x509.load_pem_x509_certificate(cert.cert_pem.encode())
    assert cert.device_id == "pump-7" and parsed.public_key() == key.public_key()
    assert rig.store.devices["pump-7"].serials == [parsed.serial_number]
    assert cert.not_after == rig.clock.now + 7 * DAY

    with pytest.raises(EnrollmentError, match="already used"):
        rig.service.enroll(issued.token, csr(new_key(), "pump-7"))


def test_unknown_malformed_and_expired_tokens_are_refused(rig: Rig) -> None:
    issued = rig.service.add_device("pump-8", name="", tags={})
    with pytest.raises(EnrollmentError, match="unknown"):
        rig.service.enroll("pump-8.not-the-secret", csr(new_key(), "pump-8"))
    with pytest.raises(EnrollmentError, match="fleetctl devices token"):
        rig.service.enroll("no-separator", csr(new_key(), "pump-8"))
    rig.clock.now += DAY + 1
    with pytest.raises(EnrollmentError, match="expired"):
        rig.service.enroll(issued.token, csr(new_key(), "pump-8"))
    fresh = rig.service.new_token("pump-8")  # an operator issues a new one
    assert rig.service.enroll(fresh.token, csr(new_key(), "pump-8")).device_id == "pump-8"


def test_a_new_token_replaces_the_previous_one(rig: Rig) -> None:
    first = rig.service.add_device("pump-9", name="", tags={})
    second = rig.service.new_token("pump-9")
    with pytest.raises(EnrollmentError, match="unknown"):
        rig.service.enroll(first.token, csr(new_key(), "pump-9"))
    assert rig.service.enroll(second.token, csr(new_key(), "pump-9")).device_id == "pump-9"


def test_a_misnamed_csr_is_refused_without_burning_the_token(rig: Rig) -> None:
    issued = rig.service.add_device("pump-10", name="", tags={})
    with pytest.raises(EnrollmentError, match="must be the device id"):
        rig.service.enroll(issued.token, csr(new_key(), "pump-11"))
    with pytest.raises(EnrollmentError, match="not a PEM CSR"):
        rig.service.enroll(issued.token, b"junk")
    assert rig.service.enroll(issued.token, csr(new_key(), "pump-10")).device_id == "pump-10"


def test_invalid_device_ids_and_duplicates_are_refused(rig: Rig) -> None:
    with pytest.raises(EnrollmentError, match="invalid device id"):
        rig.service.add_device("pump/1", name="", tags={})
    rig.service.add_device("dup-1", name="", tags={})
    with pytest.raises(StoreError, match="already exists"):
        rig.service.add_device("dup-1", name="", tags={})


def enrolled(rig: Rig, device_id: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    token = rig.service.add_device(device_id, name="", tags={}).token
    key = new_key()
    return key, rig.service.enroll(token, csr(key, device_id)).cert_pem.encode()


def test_renewal_with_proof_of_possession_issues_a_new_certificate(memory_rig: Rig) -> None:
    rig = memory_rig
    key, cert = enrolled(rig, "ren-1")
    rig.clock.now += 5 * DAY
    new = new_key()
    request = csr(new, "ren-1")
    renewed = rig.service.renew(cert, request, proof(key, request))
    parsed = x509.load_pem_x509_certificate(renewed.cert_pem.encode())
    assert parsed.public_key() == new.public_key()
    assert renewed.not_after == rig.clock.now + 7 * DAY
    assert len(rig.store.devices["ren-1"].serials) == 2
    # The renewal supersedes the old certificate: it is on the CRL handed to the broker
    # and cannot authorise another renewal.
    old = x509.load_pem_x509_certificate(cert).serial_number
    assert x509.load_pem_x509_crl(rig.crls[-1]).get_revoked_certificate_by_serial_number(old)
    again = csr(new_key(), "ren-1")
    with pytest.raises(EnrollmentError, match="revoked"):
        rig.service.renew(cert, again, proof(key, again))


def test_renewal_refusals_say_why(rig: Rig) -> None:
    key, cert = enrolled(rig, "ren-2")
    new = new_key()
    request = csr(new, "ren-2")
    with pytest.raises(EnrollmentError, match="renewal proof does not verify"):
        rig.service.renew(cert, request, proof(new, request))  # signed with the new key
    with pytest.raises(EnrollmentError, match="renewal proof does not verify"):
        rig.service.renew(cert, request, proof(key, request + b"\n"))  # other bytes
    with pytest.raises(EnrollmentError, match="renewal proof does not verify"):
        rig.service.renew(cert, request, "%%%not-base64")
    other = csr(new, "ren-3")
    with pytest.raises(EnrollmentError, match="must be the device id"):
        rig.service.renew(cert, other, proof(key, other))
    rig.clock.now += 7 * DAY + 1
    with pytest.raises(EnrollmentError, match="expired"):
        rig.service.renew(cert, request, proof(key, request))


def test_revoked_device_cannot_renew_or_enroll_again(rig: Rig) -> None:
    key, cert = enrolled(rig, "rev-1")
    serial = x509.load_pem_x509_certificate(cert).serial_number
    assert rig.service.revoke("rev-1") == [serial]
    crl = x509.load_pem_x509_crl(rig.crls[-1])
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None

    request = csr(new_key(), "rev-1")
    with pytest.raises(EnrollmentError, match="revoked"):
        rig.service.renew(cert, request, proof(key, request))
    with pytest.raises(EnrollmentError, match="revoked"):
        rig.service.new_token("rev-1")
    # a token handed out before the revocation is dead too
    rig.store.save_enrollment_token("rev-1", hash_token("rev-1.leftover"), rig.clock.now + DAY)
    with pytest.raises(EnrollmentError, match="revoked"):
        rig.service.enroll("rev-1.leftover", request)


def test_enrolment_renewal_and_revocation_are_logged_with_device_and_serial(
    memory_rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig = memory_rig
    caplog.set_level(logging.INFO, logger="fleet_server.enrollment")
    key, cert = enrolled(rig, "log-1")
    first = x509.load_pem_x509_certificate(cert).serial_number
    request = csr(new_key(), "log-1")
    renewed = rig.service.renew(cert, request, proof(key, request))
    second = x509.load_pem_x509_certificate(renewed.cert_pem.encode()).serial_number
    rig.service.revoke("log-1")
    assert [r.getMessage() for r in caplog.records] == [
        f"enrolled device log-1 (certificate serial {first:x})",
        f"renewed certificate of log-1 (serial {second:x}; 1 earlier revoked)",
        "revoked device log-1 (2 certificates)",
    ]


def test_what_enrol_and_renew_send_back_and_who_is_admitted(tmp_path: Path) -> None:
    clock = Clock()
    ca = FleetCA.create(tmp_path / "ca", now=clock.now - DAY)
    admitted: list[str] = []
    service = Enrollment(
        MemoryStore(),
        ca,
        token_ttl_s=DAY,
        cert_validity_s=DAY,
        on_admit=admitted.append,
        clock=clock,
    )
    token = service.add_device("adm-1", name="", tags={}).token
    assert len(token) == len("adm-1.") + 43  # 256 random bits, url-safe base64
    key = new_key()
    cert = service.enroll(token, csr(key, "adm-1"))
    assert admitted == ["adm-1"]
    ca_pem = ca.pem.decode()
    assert cert.ca_pem == ca_pem
    request = csr(new_key(), "adm-1")
    renewed = service.renew(cert.cert_pem.encode(), request, proof(key, request))
    assert (renewed.device_id, renewed.ca_pem) == ("adm-1", ca_pem)


def test_refusals_in_full(rig: Rig) -> None:
    with pytest.raises(EnrollmentError) as info:
        rig.service.enroll("no-separator", b"")
    assert str(info.value) == (
        "that is not an enrollment token (expected DEVICE-ID.SECRET as printed by "
        "`fleetctl devices add`); ask an operator for a new one with "
        "`fleetctl devices token ID`"
    )
    key, cert = enrolled(rig, "full-1")
    request = csr(new_key(), "full-1")
    with pytest.raises(EnrollmentError) as info:
        rig.service.renew(cert, request, proof(new_key(), request))
    assert str(info.value) == (
        "the renewal proof does not verify: sign the new CSR with the current key"
    )
    rig.service.revoke("full-1")
    with pytest.raises(EnrollmentError) as info:
        rig.service.renew(cert, request, proof(key, request))
    assert str(info.value) == "cannot renew: the certificate of 'full-1' is revoked"


@pytest.mark.parametrize("token", ["pump-1.", ".secret", "pump/1.secret", "pump-1"])
def test_a_token_without_a_device_id_and_a_secret_names_no_device(token: str) -> None:
    assert token_device_id(token) is None


def test_an_ed25519_device_renews_with_an_ed25519_proof(memory_rig: Rig) -> None:
    rig = memory_rig
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed-1")])
    request = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, None)
    token = rig.service.add_device("ed-1", name="", tags={}).token
    cert = rig.service.enroll(token, request.public_bytes(serialization.Encoding.PEM))
    renewal = csr(new_key(), "ed-1")
    with pytest.raises(EnrollmentError, match="does not verify"):
        rig.service.renew(cert.cert_pem.encode(), renewal, base64.b64encode(b"x" * 64).decode())
    good = base64.b64encode(key.sign(renewal)).decode()
    assert rig.service.renew(cert.cert_pem.encode(), renewal, good).device_id == "ed-1"


@dataclass
class RecordingStore(MemoryStore):
    """The in-memory store, keeping what the service passes it and playing a
    decommissioned id (which the real store reports as reused)."""

    decommissioned: set[str] = field(default_factory=set)
    created: list[tuple[str, str, dict[str, str], float]] = field(default_factory=list)
    certificates: list[tuple[str, int, float, float]] = field(default_factory=list)

    def create_device(  # type: ignore[override]
        self, device_id: str, *, name: str, tags: dict[str, str], now: float
    ) -> bool:
        self.created.append((device_id, name, tags, now))
        self.devices[device_id] = _Device()
        return device_id in self.decommissioned

    def add_certificate(self, device_id: str, serial: int, not_after: float, now: float) -> None:
        self.certificates.append((device_id, serial, not_after, now))
        super().add_certificate(device_id, serial, not_after, now)


def test_a_reused_id_pushes_the_crl_and_a_new_one_does_not(tmp_path: Path) -> None:
    store = RecordingStore(decommissioned={"old-1"})
    rig = make_rig(tmp_path, store)
    rig.service.add_device("new-1", name="New", tags={"site": "a"})
    assert rig.crls == []
    assert store.created == [("new-1", "New", {"site": "a"}, rig.clock.now)]
    rig.service.add_device("old-1", name="Old", tags={})
    (pushed,) = rig.crls
    assert x509.load_pem_x509_crl(pushed).issuer == x509.load_pem_x509_crl(rig.service.crl()).issuer


def test_certificates_are_recorded_with_their_expiry_and_the_time_of_issue(
    tmp_path: Path,
) -> None:
    store = RecordingStore()
    rig = make_rig(tmp_path, store)
    key, cert = enrolled(rig, "exp-1")
    first = x509.load_pem_x509_certificate(cert).serial_number
    assert store.certificates == [("exp-1", first, rig.clock.now + 7 * DAY, rig.clock.now)]
    rig.clock.now += DAY
    request = csr(new_key(), "exp-1")
    renewed = rig.service.renew(cert, request, proof(key, request))
    serial = x509.load_pem_x509_certificate(renewed.cert_pem.encode()).serial_number
    assert store.certificates[-1] == ("exp-1", serial, renewed.not_after, rig.clock.now)
    assert renewed.not_after == rig.clock.now + 7 * DAY


def test_a_proof_with_characters_outside_base64_is_refused(memory_rig: Rig) -> None:
    """Lenient decoding would drop the stray character and accept the signature."""
    key, cert = enrolled(memory_rig, "b64-1")
    request = csr(new_key(), "b64-1")
    good = proof(key, request)
    with pytest.raises(EnrollmentError, match="proof does not verify"):
        memory_rig.service.renew(cert, request, good[:8] + "*" + good[8:])
    assert memory_rig.service.renew(cert, request, good).device_id == "b64-1"


def test_the_device_id_of_a_token_ends_at_its_first_dot() -> None:
    assert token_device_id("pump-1.sec.ret") == "pump-1"
