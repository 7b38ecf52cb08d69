"""The TUF client: what the device may install, according to the fleet's signed metadata.

A thin edge around python-tuf's ``ngclient.Updater``: it refreshes root →
timestamp → snapshot → targets from ``{server}/tuf/metadata/`` (trusting only
the root saved at enrollment, ``{data_dir}/tuf/root.json``, and the roots it
signs after it), then answers with the signed length, SHA-256 and custom fields
of one target.  Everything ngclient refuses — bad or missing signatures, a
threshold not met, an expired role (freeze), a version older than one seen
before (rollback), snapshot/targets versions that do not match (mix-and-match),
an oversized metadata file — becomes a :class:`TrustError` with ngclient's reason.
"""

from __future__ import annotations

import posixpath
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from tuf.api.exceptions import DownloadError, RepositoryError
from tuf.api.metadata import Metadata
from tuf.ngclient.updater import Updater

from edgefleet_contract.errors import DownloadFailed, TrustError

from .fetch import HttpxFetcher
from .journal import write_atomic
from .targets import SignedTarget
from .tuf_compat import set_reference_time

ROOT_FILE = "root.json"


def tuf_dir(data_dir: Path) -> Path:
    return data_dir / "tuf"


class TrustedRepository:
    """Refreshes the fleet's TUF metadata and looks targets up in it.

    ``clock`` is the device's notion of now (seconds since the epoch) used for
    every expiry check; tests inject it to reach a frozen timestamp's expiry.
    """

    def __init__(
        self,
        data_dir: Path,
        server_url: str,
        client: httpx.Client,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metadata_dir = tuf_dir(data_dir)
        base = server_url.rstrip("/")
        self.metadata_url = f"{base}/tuf/metadata/"
        self.targets_url = f"{base}/tuf/targets/"
        self.fetcher = HttpxFetcher(client)
        self.clock = clock

    def _updater(self) -> Updater:
        root = self.metadata_dir / ROOT_FILE
        try:
            trusted = root.read_bytes()
        except OSError:
            raise TrustError(
                f"no trusted TUF root at {root}: the device cannot verify updates. It is saved "
                "at enrollment; re-enroll against a server with signing set up"
            ) from None
        try:
            updater = Updater(
                str(self.metadata_dir),
                self.metadata_url,
                target_base_url=self.targets_url,
                fetcher=self.fetcher,
                bootstrap=trusted,
            )
        except RepositoryError as exc:
            raise TrustError(f"the trusted TUF root at {root} is unusable: {exc}") from exc
        # The device's clock wins, so a frozen timestamp is judged by the same time the
        # rest of the agent uses.
        set_reference_time(updater, self.clock())
        return updater

    def lookup(self, target_path: str) -> SignedTarget:
        """Refresh the metadata and return ``target_path`` as signed; raise if it is not."""
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        updater = self._updater()
        try:
            updater.refresh()
            info = updater.get_targetinfo(target_path)
        except RepositoryError as exc:
            raise TrustError(
                f"TUF metadata refused ({type(exc).__name__}: {exc}); update not installed"
            ) from exc
        except DownloadError as exc:
            raise DownloadFailed(f"cannot fetch TUF metadata: {exc}") from exc
        except OSError as exc:
            where = self.metadata_dir
            raise DownloadFailed(f"cannot store TUF metadata in {where}: {exc}") from exc
        if info is None:
            raise TrustError(f"{target_path} is not a signed target in the fleet's TUF metadata")
        sha256 = info.hashes.get("sha256")
        if not sha256:
            raise TrustError(f"the signed target {target_path} carries no sha256 hash")
        custom = info.unrecognized_fields.get("custom", {})
        directory, basename = posixpath.split(info.path)
        url = self.targets_url + posixpath.join(directory, f"{sha256}.{basename}")
        return SignedTarget(
            path=info.path,
            length=info.length,
            sha256=sha256,
            url=url,
            custom=dict(custom) if isinstance(custom, dict) else {},
        )


def save_root(data_dir: Path, root_json: str) -> Path:
    """Store the trust anchor handed out at enrollment (refuses anything but TUF root JSON).

    Metadata cached under an earlier anchor is dropped: enrolling is the one moment
    the device is told whom to trust, and it starts over from that root.
    """
    try:
        metadata = Metadata.from_bytes(root_json.encode())
    except Exception as exc:
        raise TrustError(f"the enrollment answer's tuf_root is not TUF metadata: {exc}") from exc
    if metadata.signed.type != "root":
        raise TrustError(f"the enrollment answer's tuf_root is {metadata.signed.type} metadata")
    directory = tuf_dir(data_dir)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    path = directory / ROOT_FILE
    write_atomic(path, root_json.encode())
    return path
