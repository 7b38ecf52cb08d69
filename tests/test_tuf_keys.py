"""TUF key files and the offline ceremony helpers: encryption, clear errors, key ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet_contract.errors import SigningError
from fleet_server.tuf import keys, offline


def test_encrypted_key_round_trip(tmp_path: Path) -> None:
    signer = keys.generate()
    path = tmp_path / "k.pem"
    keys.save(signer, path, passphrase=b"pw")
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.is_encrypted(path) and b"PRIVATE KEY" in path.read_bytes()
    assert keys.load(path, passphrase=b"pw").public_key == signer.public_key
    with pytest.raises(SigningError, match="it is encrypted: give its passphrase"):
        keys.load(path)
    with pytest.raises(SigningError, match="wrong passphrase"):
        keys.load(path, passphrase=b"nope")
    with pytest.raises(SigningError, match="cannot read key"):
        keys.load(tmp_path / "missing.pem")
    plain = tmp_path / "online.pem"
    keys.save(signer, plain)
    assert not keys.is_encrypted(plain)
    assert keys.load(plain).public_key.keyid == signer.public_key.keyid


def test_public_key_docs_are_checked() -> None:
    doc = keys.public_doc(keys.generate().public_key)
    assert keys.key_from_doc(doc).keyid == doc["keyid"]
    with pytest.raises(SigningError, match="does not match its keyid"):
        keys.key_from_doc({**doc, "keyid": "0" * 64})
    with pytest.raises(SigningError, match="ed25519"):
        keys.key_from_doc({**doc, "keytype": "rsa"})
    with pytest.raises(SigningError, match="needs 'keyid'"):
        keys.key_from_doc(["not", "a", "dict"])


def test_root_key_ceremony_files(tmp_path: Path) -> None:
    made = offline.make_root_keys(tmp_path, count=3, threshold=2, passphrase=b"pw")
    public = json.loads((tmp_path / offline.PUBLIC_FILE).read_text())
    assert public["threshold"] == 2 and len(public["keys"]) == 3
    assert b"PRIVATE" not in (tmp_path / offline.PUBLIC_FILE).read_bytes()
    found, threshold = offline.read_root_keys(tmp_path / offline.PUBLIC_FILE)
    assert [k.keyid for k in found] == [k.keyid for k in made] and threshold == 2
    assert all(keys.is_encrypted(offline.key_file(tmp_path, i)) for i in (1, 2, 3))
    with pytest.raises(SigningError, match="already holds root keys"):
        offline.make_root_keys(tmp_path, count=1, threshold=1, passphrase=None)
    with pytest.raises(SigningError, match="threshold 4"):
        offline.make_root_keys(tmp_path / "x", count=3, threshold=4, passphrase=None)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**public, "threshold": 5}))
    with pytest.raises(SigningError, match="threshold must be between 1 and 3"):
        offline.read_root_keys(bad)
    with pytest.raises(SigningError, match="not TUF root metadata"):
        offline.sign_root(b'{"signed": {}}', [])
