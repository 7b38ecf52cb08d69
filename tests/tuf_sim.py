"""A real TUF repository for device-side tests, and a loopback HTTP server that serves it.

:class:`TufRepo` signs real metadata with python-tuf's Metadata API and real
Ed25519 keys (consistent snapshots on, like the fleet server), and keeps every
published file so tests can replay old versions or serve forged ones.
:class:`RepoServer` answers the device's real httpx fetcher on 127.0.0.1 with
the URL layout of contracts.md (``/tuf/metadata/``, ``/tuf/targets/`` with
``Range``, ``/tuf/deltas/``) and has knobs for the attacks and faults the
tests need: cut a download at a fraction, append endless bytes, override any
file.
"""

from __future__ import annotations

import hashlib
import posixpath
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

ROLES = ("root", "targets", "snapshot", "timestamp")


def _expiry(days: float) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


class TufRepo:
    """Top-level roles only; one key per role unless a test adds more."""

    def __init__(self) -> None:
        self.signers: dict[str, list[CryptoSigner]] = {
            role: [CryptoSigner.generate_ed25519()] for role in ROLES
        }
        root = Root(expires=_expiry(365), consistent_snapshot=True)
        for role in ROLES:
            root.add_key(self.signers[role][0].public_key, role)
        self.root: Metadata[Root] = Metadata(root)
        self.targets: Metadata[Targets] = Metadata(Targets(expires=_expiry(30)))
        self.snapshot: Metadata[Snapshot] = Metadata(Snapshot(expires=_expiry(7)))
        self.timestamp: Metadata[Timestamp] = Metadata(Timestamp(expires=_expiry(1)))
        self.files: dict[str, bytes] = {}
        """Published metadata by file name (``1.root.json``, ``timestamp.json`` …)."""
        self.artifacts: dict[str, bytes] = {}
        """Published targets by consistent-snapshot path ``dir/{sha256}.{basename}``."""
        self.history: dict[str, list[bytes]] = {"timestamp": [], "snapshot": [], "targets": []}
        self.deltas: dict[tuple[str, str], bytes] = {}
        self._sign_publish_root()

    # ------------------------------------------------------------ signing --

    def _sign(
        self, md: Metadata[Any], role: str, signers: list[CryptoSigner] | None = None
    ) -> bytes:
        md.signatures.clear()
        for signer in signers if signers is not None else self.signers[role]:
            md.sign(signer, append=True)
        return md.to_bytes(JSONSerializer())

    def _sign_publish_root(self, signers: list[CryptoSigner] | None = None) -> bytes:
        data = self._sign(self.root, "root", signers)
        self.files[f"{self.root.signed.version}.root.json"] = data
        return data

    def root_json(self) -> str:
        return self.files["1.root.json"].decode()

    # ------------------------------------------------------------ content --

    def add_target(self, path: str, data: bytes, custom: dict[str, Any]) -> TargetFile:
        target = TargetFile.from_data(path, data, ["sha256"])
        target.unrecognized_fields["custom"] = custom
        self.targets.signed.targets[path] = target
        directory, basename = posixpath.split(path)
        sha = target.hashes["sha256"]
        self.artifacts[posixpath.join(directory, f"{sha}.{basename}")] = data
        return target

    def publish(
        self,
        *,
        targets_signers: list[CryptoSigner] | None = None,
        timestamp_expires: datetime | None = None,
    ) -> None:
        """Bump targets, snapshot and timestamp, sign them and make them servable."""
        t = self.targets.signed
        t.version += 1
        data = self._sign(self.targets, "targets", targets_signers)
        self.files[f"{t.version}.targets.json"] = data
        self.history["targets"].append(data)
        s = self.snapshot.signed
        s.version += 1
        s.meta["targets.json"] = MetaFile(version=t.version)
        data = self._sign(self.snapshot, "snapshot")
        self.files[f"{s.version}.snapshot.json"] = data
        self.history["snapshot"].append(data)
        ts = self.timestamp.signed
        ts.version += 1
        ts.snapshot_meta = MetaFile(version=s.version)
        if timestamp_expires is not None:
            ts.expires = timestamp_expires
        data = self._sign(self.timestamp, "timestamp")
        self.files["timestamp.json"] = data
        self.history["timestamp"].append(data)

    def rotate_root(
        self,
        *,
        signers_old: list[CryptoSigner] | None = None,
        change: dict[str, list[CryptoSigner]] | None = None,
        threshold: dict[str, int] | None = None,
    ) -> bytes:
        """Publish root N+1: ``change`` replaces role keys; signed by old and new root keys."""
        root = self.root.signed
        old_root_signers = list(self.signers["root"])
        for role, new in (change or {}).items():
            for keyid in list(root.roles[role].keyids):
                root.revoke_key(keyid, role)
            for signer in new:
                root.add_key(signer.public_key, role)
            self.signers[role] = new
        for role, value in (threshold or {}).items():
            root.roles[role].threshold = value
        root.version += 1
        signers = signers_old if signers_old is not None else old_root_signers
        new_root = self.signers["root"]
        both = signers + [s for s in new_root if s not in signers]
        return self._sign_publish_root(both)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Faults:
    cut_at: float | None = None
    """Close the first full-file target response after this fraction of the bytes."""
    endless: bool = False
    """Follow each target with an endless stream of junk."""
    override: dict[str, bytes] = field(default_factory=dict)
    """Serve these bytes for a request path (``metadata/timestamp.json`` …) instead."""
    ignore_range: bool = False
    throttle_s: float = 0.0
    """Pause between 2 kB pieces of a target (a slow link, so a test can act mid-download)."""
    unavailable: int = 0
    """Answer the next this many requests with 503 (an overloaded server)."""


class RepoServer:
    """``http://127.0.0.1:{port}`` serving a :class:`TufRepo` in a background thread."""

    def __init__(self, repo: TufRepo) -> None:
        self.repo = repo
        self.faults = Faults()
        self.requests: list[tuple[str, str | None]] = []
        """(path, Range header) of every request, in order."""
        self._cut_done = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _lookup(self, path: str) -> bytes | None:
        rel = path.removeprefix("/tuf/")
        if rel in self.faults.override:
            return self.faults.override[rel]
        if rel.startswith("metadata/"):
            return self.repo.files.get(rel.removeprefix("metadata/"))
        if rel.startswith("targets/"):
            return self.repo.artifacts.get(rel.removeprefix("targets/"))
        if rel.startswith("deltas/"):
            parts = rel.split("/")
            if len(parts) == 3:
                return self.repo.deltas.get((parts[1], parts[2]))
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        rng = h.headers.get("Range")
        self.requests.append((h.path, rng))
        if self.faults.unavailable > 0:
            self.faults.unavailable -= 1
            h.send_response(503)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        body = self._lookup(h.path)
        if body is None:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        is_target = h.path.startswith("/tuf/targets/")
        start = 0
        if is_target and rng and not self.faults.ignore_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                h.send_response(416)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            h.send_response(200)
        payload = body[start:]
        if is_target and self.faults.endless:
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(payload)
            junk = b"\0" * 65536
            try:
                for _ in range(1000):  # 64 MB is "endless" for a 30 kB target
                    h.wfile.write(junk)
            except OSError:
                pass
            h.close_connection = True
            return
        if is_target and start == 0 and self.faults.cut_at is not None and not self._cut_done:
            self._cut_done = True
            cut = int(len(payload) * self.faults.cut_at)
            h.send_header("Content-Length", str(len(payload)))
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(payload[:cut])
            h.wfile.flush()
            h.close_connection = True
            return
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if is_target and self.faults.throttle_s:
            try:
                for i in range(0, len(payload), 2048):
                    h.wfile.write(payload[i : i + 2048])
                    h.wfile.flush()
                    time.sleep(self.faults.throttle_s)
            except OSError:
                h.close_connection = True
            return
        h.wfile.write(payload)
