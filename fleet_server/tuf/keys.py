"""TUF signing keys on disk: Ed25519 in PKCS#8 PEM, encrypted when they belong offline.

Online keys (targets, snapshot, timestamp) live unencrypted in the server's
data dir with mode 0600, because the server signs with them unattended.  Root
keys are made by ``fleetctl keys init`` on the operator's (ideally air-gapped)
machine and are encrypted with a passphrase; only their public halves ever
reach the server.  The passphrase comes from a prompt or from
``EDGEFLEET_KEY_PASSPHRASE`` (for scripted ceremonies), never from a flag, so
it does not land in shell history or ``ps``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from edgefleet_contract.errors import SigningError

from ..pki import write_private

PASSPHRASE_ENV = "EDGEFLEET_KEY_PASSPHRASE"


def generate() -> CryptoSigner:
    """A fresh Ed25519 signer (its ``public_key`` is the TUF key)."""
    private = Ed25519PrivateKey.generate()
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))


def save(signer: CryptoSigner, path: Path, *, passphrase: bytes | None = None) -> None:
    """Write the private key (0600, atomically); encrypted when a passphrase is given."""
    pem = signer.private_bytes
    if passphrase:
        private = serialization.load_pem_private_key(pem, password=None)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
    write_private(path, pem)


def load(path: Path, *, passphrase: bytes | None = None) -> CryptoSigner:
    """Read a key written by :func:`save`; a clear :class:`SigningError` if it cannot."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read key {path}: {exc.strerror or exc}") from exc
    try:
        private = serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError as exc:
        hint = "it is encrypted: give its passphrase" if passphrase is None else str(exc)
        raise SigningError(f"cannot open key {path}: {hint}") from exc
    except ValueError as exc:
        raise SigningError(
            f"cannot open key {path}: wrong passphrase or not a PEM private key"
        ) from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningError(f"{path} is not an Ed25519 key")
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))


def is_encrypted(path: Path) -> bool:
    try:
        return b"ENCRYPTED" in path.read_bytes()[:64]
    except OSError as exc:
        raise SigningError(f"cannot read key {path}: {exc.strerror or exc}") from exc


def public_doc(key: Key) -> dict[str, Any]:
    """The key as a JSON-able dict, with its keyid (what ``keys init`` exports)."""
    return {"keyid": key.keyid, **key.to_dict()}


def key_from_doc(doc: Any) -> Key:
    """Parse a :func:`public_doc` dict back into a key, checking the keyid matches."""
    if not isinstance(doc, dict) or "keyid" not in doc:
        raise SigningError("a public key entry needs 'keyid', 'keytype', 'scheme' and 'keyval'")
    fields = {k: v for k, v in doc.items() if k != "keyid"}
    try:
        key = Key.from_dict(str(doc["keyid"]), fields)
        if key.keytype != "ed25519":
            raise ValueError(f"key type {key.keytype!r} (edgefleet uses ed25519)")
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.keyval["public"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise SigningError(f"not a valid public key entry: {exc}") from exc
    if SSlibKey.from_crypto(public).keyid != key.keyid:
        raise SigningError(f"public key {key.keyid[:16]}... does not match its keyid")
    return key


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except OSError as exc:
        raise SigningError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise SigningError(f"{path} is not valid JSON: {exc}") from exc


def read_json_bytes(path: Path) -> bytes:
    """The bytes of a JSON file, after checking it parses (for a clear error early)."""
    read_json(path)
    return path.read_bytes()
