"""The offline half of root management: make root keys, sign a root.

Nothing here talks to the network or to the server's data dir, so it runs the
same on an air-gapped laptop: ``fleetctl keys init`` writes encrypted root
keys plus ``root-keys.json`` (their public halves and the threshold, the one
file that travels to the server side), and ``fleetctl keys sign-root`` adds
signatures to a root proposal the server produced.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from edgefleet_contract.errors import SigningError

from ..pki import write_public
from . import keys

PUBLIC_FILE = "root-keys.json"


def key_file(directory: Path, index: int) -> Path:
    return directory / f"root-key-{index}.pem"


def make_root_keys(
    directory: Path, *, count: int, threshold: int, passphrase: bytes | None
) -> list[Key]:
    """Write ``count`` root keys (encrypted with ``passphrase``) and ``root-keys.json``."""
    if not 1 <= threshold <= count:
        raise SigningError(f"threshold {threshold} must be between 1 and the {count} keys")
    existing = sorted(directory.glob("root-key-*.pem"))
    if existing:
        raise SigningError(f"{directory} already holds root keys ({existing[0].name}); refusing")
    made: list[Key] = []
    for i in range(1, count + 1):
        signer = keys.generate()
        keys.save(signer, key_file(directory, i), passphrase=passphrase)
        made.append(signer.public_key)
    doc = {"threshold": threshold, "keys": [keys.public_doc(k) for k in made]}
    write_public(directory / PUBLIC_FILE, json.dumps(doc, indent=1).encode())
    return made


def read_root_keys(path: Path) -> tuple[list[Key], int]:
    """The public root keys and threshold from a ``root-keys.json``."""
    doc = keys.read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise SigningError(f"{path} is not a root-keys.json (needs 'threshold' and 'keys')")
    found = [keys.key_from_doc(entry) for entry in doc["keys"]]
    threshold = doc.get("threshold")
    if not isinstance(threshold, int) or not 1 <= threshold <= len(found):
        raise SigningError(f"{path}: threshold must be between 1 and {len(found)}")
    return found, threshold


def parse_root(data: bytes) -> Metadata[Root]:
    """``data`` as root metadata; raises :class:`SigningError` saying what it is instead."""
    try:
        md = Metadata[Root].from_bytes(data)
    except DeserializationError as exc:
        raise SigningError(f"not TUF root metadata: {exc}") from exc
    if md.signed.type != Root.type:
        raise SigningError(f"expected root metadata, got {md.signed.type}")
    return md


def sign_root(data: bytes, signers: Sequence[Signer]) -> bytes:
    """Add each signer's signature to the root in ``data`` (signatures already there stay)."""
    md = parse_root(data)
    for signer in signers:
        md.sign(signer, append=True)
    return md.to_bytes(JSONSerializer(compact=False))
