"""Artifact routes and public TUF routes: roles, audit, limits, Range requests, deltas."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import bsdiff4
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import CertificateSigningRequestBuilder, Name, NameAttribute
from cryptography.x509.oid import NameOID

from edgefleet_contract.firmware import write_bundle

from .ota_server import DIGITS, FIRMWARE, make_env, model_version

OLD, NEW = FIRMWARE / "edge-os-1.0.0.efbundle", FIRMWARE / "edge-os-1.1.0.efbundle"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_roles_and_audit(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    viewer, operator = env.login("vic"), env.login("olga")
    r = env.push("model", DIGITS, viewer)
    assert r.status_code == 403 and "operator" in r.json()["detail"]
    assert env.client.post("/api/v1/artifacts/models", content=b"x").status_code == 401
    assert env.push("model", DIGITS, operator).status_code == 201
    assert env.push("firmware", NEW, operator).status_code == 201

    listed = env.client.get("/api/v1/artifacts", headers=viewer).json()
    assert listed["total"] == 2
    assert [a["kind"] for a in listed["items"]] == ["firmware", "model"]
    only = env.client.get("/api/v1/artifacts", params={"kind": "model"}, headers=viewer).json()
    assert [a["spec"] for a in only["items"]] == ["digits@1.0.0:onnx-int8"]
    one = env.client.get(f"/api/v1/artifacts/{only['items'][0]['id']}", headers=viewer).json()
    assert one["uploaded_by"] == "olga" and one["lineage"]["source"] == "upload"
    assert env.client.get("/api/v1/artifacts/999", headers=viewer).status_code == 404
    assert all(a["tuf_signed"] is True for a in listed["items"])

    pushes = {entry for entry in env.audited() if "push" in entry[1]}
    assert ("vic", "push_model", "denied") in pushes
    assert ("olga", "push_model", "ok") in pushes
    assert ("olga", "push_firmware", "ok") in pushes


def test_duplicates_and_bad_uploads(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    operator = env.login("olga")
    first = env.push("model", DIGITS, operator).json()
    again = env.push("model", DIGITS, operator)
    assert again.status_code == 201 and again.json()["id"] == first["id"]  # idempotent
    # Same name, version and flavour with other bytes: refused.
    changed = tmp_path / "changed.efpkg"
    changed.write_bytes(_with_new_timestamp(DIGITS))
    r = env.push("model", changed, operator)
    assert r.status_code == 409 and "already registered" in r.json()["detail"]

    tampered = bytearray(DIGITS.read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF
    bad = tmp_path / "bad.efpkg"
    bad.write_bytes(bytes(tampered))
    r = env.push("model", bad, operator)
    assert r.status_code == 400 and r.json()["detail"]
    r = env.push("model", NEW, operator)  # a firmware bundle is not a model package
    assert r.status_code == 400 and "manifest.json is invalid" in r.json()["detail"]
    r = env.push("firmware", DIGITS, operator)
    assert r.status_code == 400 and "exactly manifest.json and one image" in r.json()["detail"]
    assert env.client.get("/api/v1/artifacts", headers=operator).json()["total"] == 1
    # A new version of the same model is fine.
    r = env.push("model", model_version(tmp_path, "1.1.0"), operator)
    assert r.status_code == 201 and r.json()["version"] == "1.1.0"
    assert not list((env.data_dir / "artifacts" / "tmp").iterdir())  # temp files cleaned


def _with_new_timestamp(path: Path) -> bytes:
    from edgefleet_contract.package import Manifest, pack_package, read_package

    pkg = read_package(path)
    manifest = Manifest.model_validate({**pkg.manifest.model_dump(), "created_at": 12345.0})
    return pack_package(manifest, dict(pkg.members))


def test_upload_limit_is_its_own(tmp_path: Path) -> None:
    env = make_env(tmp_path, artifacts={"max_upload_bytes": 100_000})
    operator = env.login("olga")
    # Bigger than the API's 1 MiB limit for other routes would refuse, smaller than this one's.
    assert DIGITS.stat().st_size < 100_000
    assert env.push("model", DIGITS, operator).status_code == 201
    big = tmp_path / "big.efbundle"
    write_bundle(big, {"name": "big", "version": "1.0.0", "hardware": ["x"]}, bytes(200_000))
    r = env.push("firmware", big, operator)
    assert r.status_code == 413 and "100000 bytes" in r.json()["detail"]
    # Without Content-Length (chunked) the route's own streaming check still holds.
    chunks = iter([big.read_bytes()[i : i + 50_000] for i in range(0, 200_200, 50_000)])
    r = env.client.post(
        "/api/v1/artifacts/firmware",
        content=chunks,
        headers={**operator, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 413
    # Other routes keep the 1 MiB limit.
    r = env.client.post(
        "/api/v1/devices", content=b"{" + b" " * (1024 * 1024 + 1) + b"}", headers=operator
    )
    assert r.status_code == 413


def test_range_requests_on_targets(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    pushed = env.push("firmware", NEW, env.login("olga")).json()
    sha, body = pushed["sha256"], NEW.read_bytes()
    url = f"/tuf/targets/firmware/edge-os/1.1.0/{sha}.edge-os-1.1.0.efbundle"
    full = env.client.get(url)
    assert full.status_code == 200 and full.content == body
    assert full.headers["accept-ranges"] == "bytes"
    cut = int(len(body) * 0.9)
    rest = env.client.get(url, headers={"Range": f"bytes={cut}-"})
    assert rest.status_code == 206
    assert rest.headers["content-range"] == f"bytes {cut}-{len(body) - 1}/{len(body)}"
    assert body[:cut] + rest.content == body
    assert env.client.get(url, headers={"Range": f"bytes={len(body) + 10}-"}).status_code == 416
    # The hash and the path must both match a registered artifact.
    assert env.client.get(url.replace(sha, "0" * 64)).status_code == 404
    assert env.client.get(url.replace("1.1.0/", "1.0.0/", 1)).status_code == 404
    assert env.client.get(f"/tuf/targets/{sha}").status_code == 404
    assert env.client.get("/tuf/metadata/..%2Ffleet.db").status_code == 404
    assert env.client.get("/tuf/metadata/timestamp.json").headers["cache-control"] == "no-store"


def test_deltas_reconstruct_exactly(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    operator = env.login("olga")
    for path in (OLD, NEW):
        assert env.push("firmware", path, operator).status_code == 201
    old, new = _sha(OLD), _sha(NEW)
    env.client.app.state.ctx.deltas.wait()  # type: ignore[attr-defined]  # made on push
    r = env.client.get(f"/tuf/deltas/{old}/{new}")
    assert r.status_code == 200
    assert len(r.content) < NEW.stat().st_size // 5
    assert bsdiff4.patch(OLD.read_bytes(), r.content) == NEW.read_bytes()
    assert (env.data_dir / "deltas" / f"{old}-{new}.bsdiff").is_file()  # cached
    assert env.client.get(f"/tuf/deltas/{old}/{new}").content == r.content
    assert env.client.get(f"/tuf/deltas/{old}/{'1' * 64}").status_code == 404
    assert env.client.get(f"/tuf/deltas/{old}/{old}").status_code == 404

    # Unrelated high-entropy images: a patch would not be smaller, so there is none.
    noise = tmp_path / "noise.efbundle"
    write_bundle(noise, {"name": "edge-os", "version": "9.0.0", "hardware": ["x"]}, _random(131072))
    assert env.push("firmware", noise, operator).status_code == 201
    env.client.app.state.ctx.deltas.wait()  # type: ignore[attr-defined]
    assert (env.data_dir / "deltas" / f"{old}-{_sha(noise)}.none").is_file()
    r = env.client.get(f"/tuf/deltas/{old}/{_sha(noise)}")
    assert r.status_code == 404 and "not smaller" in r.json()["detail"]


def _random(size: int) -> bytes:
    return hashlib.shake_256(b"unrelated").digest(size)


def test_enroll_hands_out_the_tuf_root(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    operator = env.login("olga")
    token = env.client.post("/api/v1/devices", headers=operator, json={"id": "e1"}).json()["token"]
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        CertificateSigningRequestBuilder()
        .subject_name(Name([NameAttribute(NameOID.COMMON_NAME, "e1")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    r = env.client.post("/api/v1/enroll", json={"token": token, "csr_pem": csr})
    assert r.status_code == 200, r.text
    root = r.json()["tuf_root"]
    assert root.encode() == env.tuf.root_bytes()
    assert json.loads(root)["signed"]["_type"] == "root"


def test_root_routes_need_admin(tmp_path: Path) -> None:
    from fleet_server.tuf import keys, offline

    env = make_env(tmp_path)
    viewer, operator, admin = env.login("vic"), env.login("olga"), env.login("alice")
    assert env.client.get("/api/v1/tuf/root").status_code == 401
    root = env.client.get("/api/v1/tuf/root", headers=viewer).json()
    assert root["signed"]["version"] == 1
    online = env.client.get("/api/v1/tuf/keys", headers=viewer).json()["online"]
    assert online["timestamp"]["keyid"] == env.tuf.online_keys()["timestamp"].keyid
    body = {"rotate": ["timestamp"]}
    r = env.client.post("/api/v1/tuf/root-proposals", json=body, headers=operator)
    assert r.status_code == 403
    r = env.client.post("/api/v1/tuf/root-proposals", json={"rotate": ["root"]}, headers=admin)
    assert r.status_code == 400 and "not an online role" in r.json()["detail"]
    proposal = env.client.post("/api/v1/tuf/root-proposals", json=body, headers=admin).json()
    assert proposal["signed"]["version"] == 2 and proposal["signatures"] == []
    signer = keys.load(offline.key_file(env.data_dir / "offline", 1))
    signed = offline.sign_root(json.dumps(proposal).encode(), [signer])
    assert env.client.post("/api/v1/tuf/root", content=signed, headers=operator).status_code == 403
    r = env.client.post("/api/v1/tuf/root", content=b"not json", headers=admin)
    assert r.status_code == 400 and "not TUF root metadata" in r.json()["detail"]
    r = env.client.post("/api/v1/tuf/root", content=signed, headers=admin)
    assert r.status_code == 200 and r.json()["version"] == 2
    actions = env.audited()
    assert ("olga", "propose_root", "denied") in actions
    assert ("alice", "install_root", "ok") in actions


def test_tuf_status_follows_the_signed_targets(tmp_path: Path) -> None:
    """An artifact whose target the signed metadata lists with another hash is not signed."""
    env = make_env(tmp_path)
    operator = env.login("olga")
    pushed = env.push("model", DIGITS, operator).json()
    assert pushed["tuf_signed"] is True
    env.tuf.add_target(pushed["target_path"], length=pushed["size"], sha256="0" * 64, custom={})
    one = env.client.get(f"/api/v1/artifacts/{pushed['id']}", headers=operator).json()
    assert one["tuf_signed"] is False
