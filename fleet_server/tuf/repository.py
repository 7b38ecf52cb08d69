"""The server's TUF repository: metadata files on disk, signed with the online keys.

Layout under ``{data_dir}/tuf/``::

    metadata/{N}.root.json  every root version (clients walk the chain from theirs)
    metadata/{N}.targets.json, {N}.snapshot.json  the last few versions (consistent snapshots)
    metadata/timestamp.json
    keys/{role}.pem         online keys, mode 0600 (targets, snapshot, timestamp)
    keys/{role}.pending.pem a rotated key waiting for its root to be signed offline

The root is never signed here: a new root comes from the operator's offline
keys (:mod:`fleet_server.tuf.offline`) and :meth:`TufRepository.install_root`
accepts it only if it verifies exactly as a client would check it.  Every
other role is re-signed by the server, always with a higher version: when a
target is added (targets -> snapshot -> timestamp) and by :meth:`refresh`
well before a role expires.  The targets -> snapshot -> timestamp chain is
python-tuf's own (:class:`tuf.repository.Repository`: ``edit``, ``do_snapshot``,
``do_timestamp``); :class:`_Store` only says where each role's file lives and
which key signs it.  One lock serialises writers; files are replaced
atomically, newest role last, so a reader never sees a timestamp that points
at a snapshot not yet written.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Key, Signer
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
from tuf.repository import Repository

from edgefleet_contract.errors import SigningError

from ..pki import write_public
from . import keys
from .offline import parse_root

ONLINE_ROLES = ("targets", "snapshot", "timestamp")
KEEP_VERSIONS = 20
"""Old targets/snapshot versions kept, so a client midway through an update finds its files."""
_METADATA_NAME = re.compile(r"^(?:(\d{1,10})\.(root|targets|snapshot)|timestamp)\.json$")
_SERIALIZER = JSONSerializer(compact=True)
_ONLINE_KINDS: dict[str, type[Targets | Snapshot | Timestamp]] = {
    Targets.type: Targets,
    Snapshot.type: Snapshot,
    Timestamp.type: Timestamp,
}


@dataclass(frozen=True)
class Lifetimes:
    """How long each role's signature is valid, in seconds.

    A role is re-signed once less than half of its lifetime is left, so a
    server that was down for a while still hands out fresh metadata before
    clients start refusing it.
    """

    root: int = 365 * 86400
    targets: int = 30 * 86400
    snapshot: int = 7 * 86400
    timestamp: int = 86400


def expiry(now: float, seconds: int) -> datetime:
    return datetime.fromtimestamp(int(now + seconds), tz=UTC)


class TufRepository:
    def __init__(
        self,
        directory: Path,
        *,
        clock: Callable[[], float] = time.time,
        lifetimes: Lifetimes = Lifetimes(),
    ) -> None:
        self.directory = directory
        self.metadata_dir = directory / "metadata"
        self.keys_dir = directory / "keys"
        self.clock = clock
        self.lifetimes = lifetimes
        self._lock = threading.RLock()
        if not (self.metadata_dir / "1.root.json").exists():
            raise SigningError(
                f"{directory} holds no TUF repository; run `fleet-server init` first"
            )
        self._signers = {role: self._load_key(role) for role in ONLINE_ROLES}
        self._store = _Store(self)

    # ------------------------------------------------------------- creation --

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        root_signers: Sequence[Signer],
        root_threshold: int,
        clock: Callable[[], float] = time.time,
        lifetimes: Lifetimes = Lifetimes(),
    ) -> TufRepository:
        """Make online keys and version 1 of every role, the root signed by ``root_signers``."""
        if (directory / "metadata" / "1.root.json").exists():
            raise SigningError(f"{directory} already holds a TUF repository")
        if not 1 <= root_threshold <= len(root_signers):
            raise SigningError(
                f"root threshold {root_threshold} needs 1..{len(root_signers)} root keys"
            )
        now = clock()
        root = Root(expires=expiry(now, lifetimes.root), consistent_snapshot=True)
        for signer in root_signers:
            root.add_key(signer.public_key, Root.type)
        root.roles[Root.type].threshold = root_threshold
        (directory / "keys").mkdir(parents=True, exist_ok=True, mode=0o700)
        for role in ONLINE_ROLES:
            online = keys.generate()
            keys.save(online, directory / "keys" / f"{role}.pem")
            root.add_key(online.public_key, role)
        md = Metadata(root)
        for signer in root_signers:
            md.sign(signer, append=True)
        _write(directory / "metadata" / "1.root.json", md.to_bytes(_SERIALIZER))
        repo = cls(directory, clock=clock, lifetimes=lifetimes)
        with repo._exclusive():
            repo._publish(targets=True)
        return repo

    # ------------------------------------------------------------- reading --

    def root(self) -> Metadata[Root]:
        return Metadata[Root].from_bytes(self.root_bytes())

    def root_bytes(self) -> bytes:
        return (self.metadata_dir / f"{self.root_version()}.root.json").read_bytes()

    def root_version(self) -> int:
        return self._latest("root")

    def metadata_file(self, name: str) -> Path | None:
        """The file behind ``GET /tuf/metadata/{name}``, or None if the name is not one."""
        if not _METADATA_NAME.fullmatch(name):
            return None
        path = self.metadata_dir / name
        return path if path.is_file() else None

    def targets(self) -> Metadata[Targets]:
        return _load(self.metadata_dir / f"{self._latest('targets')}.targets.json", Targets)

    def timestamp(self) -> Metadata[Timestamp]:
        return _load(self.metadata_dir / "timestamp.json", Timestamp)

    def snapshot(self) -> Metadata[Snapshot]:
        return _load(self.metadata_dir / f"{self._latest('snapshot')}.snapshot.json", Snapshot)

    def online_keys(self) -> dict[str, Key]:
        """The public online keys in use (what an offline root must list)."""
        return {role: self._signers[role].public_key for role in ONLINE_ROLES}

    # ------------------------------------------------------------- writing --

    def add_target(self, path: str, *, length: int, sha256: str, custom: Mapping[str, Any]) -> int:
        """Publish (or replace) one target; returns the new targets version."""
        with self._exclusive():
            with self._store.edit_targets() as targets:
                targets.targets[path] = TargetFile(
                    length, {"sha256": sha256}, path, unrecognized_fields={"custom": dict(custom)}
                )
            self._publish(targets=False)
            return self._latest("targets")

    def refresh(self) -> list[str]:
        """Re-sign every role that has less than half its lifetime left; returns their names."""
        now = self.clock()
        with self._exclusive():
            if self._stale(self.targets().signed.expires, self.lifetimes.targets, now):
                self._publish(targets=True)
                return ["targets", "snapshot", "timestamp"]
            if self._stale(self.snapshot().signed.expires, self.lifetimes.snapshot, now):
                self._store.do_snapshot(force=True)
                self._store.do_timestamp()
                self._prune()
                return ["snapshot", "timestamp"]
            if self._stale(self.timestamp().signed.expires, self.lifetimes.timestamp, now):
                self._store.do_timestamp(force=True)
                return ["timestamp"]
            return []

    def next_refresh_in(self) -> float:
        """Seconds until :meth:`refresh` has something to do (never negative)."""
        now = self.clock()
        due = min(
            self._due(self.targets().signed.expires, self.lifetimes.targets),
            self._due(self.snapshot().signed.expires, self.lifetimes.snapshot),
            self._due(self.timestamp().signed.expires, self.lifetimes.timestamp),
        )
        return max(0.0, due - now)

    # --------------------------------------------------------- root changes --

    def propose_root(
        self,
        *,
        rotate: Iterable[str] = (),
        root_keys: Sequence[Key] | None = None,
        root_threshold: int | None = None,
    ) -> Metadata[Root]:
        """An unsigned next root: new online keys for ``rotate``, optionally new root keys.

        New online keys are generated now and kept as ``{role}.pending.pem``;
        they take over when the signed root is installed.  The proposal goes to
        the offline machine (``fleetctl keys sign-root``) and comes back signed
        by a threshold of the current root keys and of the new ones.
        """
        rotate = list(dict.fromkeys(rotate))
        unknown = [r for r in rotate if r not in ONLINE_ROLES]
        if unknown:
            raise SigningError(f"{unknown[0]!r} is not an online role ({', '.join(ONLINE_ROLES)})")
        with self._exclusive():
            current = self.root()
            root = current.signed
            root.version += 1
            root.expires = expiry(self.clock(), self.lifetimes.root)
            for role in rotate:
                pending = self.keys_dir / f"{role}.pending.pem"
                signer = keys.load(pending) if pending.exists() else keys.generate()
                if not pending.exists():
                    keys.save(signer, pending)
                _replace_keys(root, role, [signer.public_key])
            if root_keys is not None:
                _replace_keys(root, Root.type, list(root_keys))
            if root_threshold is not None:
                root.roles[Root.type].threshold = root_threshold
            if not 1 <= root.roles[Root.type].threshold <= len(root.roles[Root.type].keyids):
                raise SigningError("the root threshold must be between 1 and the number of keys")
            return Metadata(root)

    def install_root(self, data: bytes) -> Metadata[Root]:
        """Publish a root signed offline, after checking it the way a client will.

        It must be the next version, keep consistent snapshots, be signed by a
        threshold of the current root's root keys *and* of its own, and name
        online keys this server holds (current or pending).  Then every online
        role is re-signed so clients see it at once.
        """
        with self._exclusive():
            trusted = self.root()
            new = parse_root(data)
            check_root_successor(trusted, new)
            for role in ONLINE_ROLES:
                keyids = new.signed.roles[role].keyids
                signer = self._signers[role]
                if signer.public_key.keyid in keyids:
                    continue
                pending = self.keys_dir / f"{role}.pending.pem"
                candidate = keys.load(pending) if pending.exists() else None
                if candidate is None or candidate.public_key.keyid not in keyids:
                    raise SigningError(
                        f"the new root's {role} key is not held by this server; "
                        f"run `fleetctl keys rotate --role {role}` to get a root to sign"
                    )
            version = new.signed.version
            _write(self.metadata_dir / f"{version}.root.json", new.to_bytes(_SERIALIZER))
            for role in ONLINE_ROLES:
                pending = self.keys_dir / f"{role}.pending.pem"
                if pending.exists() and self._signers[role].public_key.keyid not in (
                    new.signed.roles[role].keyids
                ):
                    pending.replace(self.keys_dir / f"{role}.pem")
                    self._signers[role] = self._load_key(role)
            self._publish(targets=True)
            return new

    # ------------------------------------------------------------ internals --

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One writer at a time, across threads and across the fleet-server processes that
        share this directory (a POSIX lock on ``.lock``: local disks and NFSv4 honour it),
        so two replicas never publish the same metadata version."""
        with self._lock, open(self.directory / ".lock", "a") as fh:
            fcntl.lockf(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(fh, fcntl.LOCK_UN)

    def _load_key(self, role: str) -> CryptoSigner:
        return keys.load(self.keys_dir / f"{role}.pem")

    def _latest(self, role: str) -> int:
        versions = [
            int(p.name.split(".", 1)[0])
            for p in self.metadata_dir.glob(f"*.{role}.json")
            if p.name.split(".", 1)[0].isdigit()
        ]
        return max(versions, default=0)

    def _stale(self, expires: datetime, lifetime: int, now: float) -> bool:
        return expires.timestamp() - now < lifetime / 2

    def _due(self, expires: datetime, lifetime: int) -> float:
        return expires.timestamp() - lifetime / 2

    def _publish(self, *, targets: bool) -> None:
        """Re-sign targets (if ``targets``), then a new snapshot and timestamp, in that order."""
        if targets:
            with self._store.edit_targets():
                pass  # a new version, expiry and signature: what edit() does on its way out
        self._store.do_snapshot()
        self._store.do_timestamp()
        self._prune()

    def _prune(self) -> None:
        for role in ("targets", "snapshot"):
            floor = self._latest(role) - KEEP_VERSIONS
            for path in self.metadata_dir.glob(f"*.{role}.json"):
                head = path.name.split(".", 1)[0]
                if head.isdigit() and int(head) <= floor:
                    path.unlink(missing_ok=True)


class _Store(Repository):
    """Where python-tuf's repository helpers read and write each role of one repository.

    ``open`` reads the newest file of a role (or starts one at version 0);
    ``close`` gives it the next version and a fresh expiry, signs it with the
    role's online key and writes it.  (python-tuf marks :mod:`tuf.repository`
    as not yet stable API; ``tuf`` is pinned to the major this was checked with.)
    """

    def __init__(self, repo: TufRepository) -> None:
        self.repo = repo

    def open(self, role: str) -> Metadata[Any]:
        repo = self.repo
        if role == Root.type:
            return repo.root()
        if role == Timestamp.type:
            path = repo.metadata_dir / "timestamp.json"
        else:
            path = repo.metadata_dir / f"{repo._latest(role)}.{role}.json"
        kind = _ONLINE_KINDS[role]
        if not path.exists():
            md: Metadata[Any] = Metadata(kind())
            md.signed.version = 0  # close() makes it version 1
            return md
        return _load(path, kind)

    def close(self, role: str, md: Metadata[Any]) -> None:
        repo = self.repo
        md.signed.version += 1
        md.signed.expires = expiry(repo.clock(), getattr(repo.lifetimes, role))
        md.signatures.clear()
        md.sign(repo._signers[role])
        name = "timestamp.json" if role == Timestamp.type else f"{md.signed.version}.{role}.json"
        _write(repo.metadata_dir / name, md.to_bytes(_SERIALIZER))

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        return {"targets.json": MetaFile(version=self.repo._latest(Targets.type))}

    @property
    def snapshot_info(self) -> MetaFile:
        return MetaFile(version=self.repo._latest(Snapshot.type))


def check_root_successor(trusted: Metadata[Root], new: Metadata[Root]) -> None:
    """Raise :class:`SigningError` unless a client trusting ``trusted`` would accept ``new``."""
    if new.signed.version != trusted.signed.version + 1:
        raise SigningError(
            f"the new root is version {new.signed.version}; "
            f"version {trusted.signed.version + 1} is expected"
        )
    if not new.signed.consistent_snapshot:
        raise SigningError("the new root must keep consistent_snapshot on")
    for who, delegator in (("current", trusted.signed), ("new", new.signed)):
        result = delegator.get_verification_result(Root.type, new.signed_bytes, new.signatures)
        if not result:
            raise SigningError(
                f"the new root has {len(result.signed)} valid signature(s) from the {who} "
                f"root keys; {result.threshold} are required"
            )
    if new.signed.expires.timestamp() <= time.time():
        raise SigningError("the new root has already expired")


def _replace_keys(root: Root, role: str, new_keys: Sequence[Key]) -> None:
    for keyid in list(root.roles[role].keyids):
        root.revoke_key(keyid, role)
    for key in new_keys:
        root.add_key(key, role)


def _load(path: Path, kind: type[Any]) -> Metadata[Any]:
    md: Metadata[Any] = Metadata.from_file(str(path))
    if not isinstance(md.signed, kind):
        raise SigningError(f"{path} does not hold {kind.type} metadata")
    return md


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_public(path, data)


__all__ = [
    "ONLINE_ROLES",
    "Lifetimes",
    "TufRepository",
    "check_root_successor",
]
