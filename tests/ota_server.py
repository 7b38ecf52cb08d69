"""A fleet server API with the artifact registry and TUF repository, for the OTA tests.

Real store, real content-addressed files, real TUF metadata signed with real
keys; devices are played by python-tuf's own ``ngclient.Updater`` talking to
the app through :class:`AppFetcher` (HTTP over starlette's test client).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface, Updater

from edgefleet_contract.package import Manifest, pack_package, read_package
from fleet_server.api import ApiContext, create_app
from fleet_server.config import ServerSettings
from fleet_server.enrollment import Enrollment
from fleet_server.pki import FleetCA
from fleet_server.registry import ArtifactRegistry, BlobStore, DeltaCache
from fleet_server.store.base import Store
from fleet_server.tuf import TufRepository
from fleet_server.tuf.bootstrap import initialize_tuf, tuf_lifetimes

from .api_kit import login, store_with_users

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "fleet_server" / "factory_models"
FIRMWARE = ROOT / "firmware_images" / "dist"
DIGITS = MODELS / "digits-1.0.0-onnx-int8.efpkg"


class Clock:
    """A settable clock for the server side (clients always use the real time)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


class AppFetcher(FetcherInterface):
    """ngclient's fetcher over the test client; non-200 answers raise DownloadHTTPError."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.urls: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.urls.append(url)
        response = self.client.get(url)
        if response.status_code != 200:
            raise DownloadHTTPError(f"{url}: HTTP {response.status_code}", response.status_code)
        return iter([response.content])


@dataclass
class OtaEnv:
    data_dir: Path
    client: TestClient
    store: Store
    registry: ArtifactRegistry
    tuf: TufRepository
    clock: Clock
    settings: ServerSettings

    def login(self, user: str) -> dict[str, str]:
        return login(self.client, user)

    def audited(self, limit: int = 20) -> set[tuple[str, str, str]]:
        """Who did what with which outcome, in the store's ``limit`` newest audit entries."""
        return {(a.actor, a.action, a.outcome) for a in self.store.list_audit(limit=limit).items}

    def updater(self, device_dir: Path, *, root: bytes | None = None) -> Updater:
        """A device's TUF client; trusts ``root`` (default: the server's first root)."""
        metadata = device_dir / "metadata"
        metadata.mkdir(parents=True, exist_ok=True)
        (device_dir / "targets").mkdir(exist_ok=True)
        bootstrap = root or (self.tuf.metadata_dir / "1.root.json").read_bytes()
        return Updater(
            metadata_dir=str(metadata),
            metadata_base_url="http://testserver/tuf/metadata/",
            target_dir=str(device_dir / "targets"),
            target_base_url="http://testserver/tuf/targets/",
            fetcher=AppFetcher(self.client),
            bootstrap=bootstrap,
        )

    def push(self, kind: str, path: Path, headers: dict[str, str]) -> httpx.Response:
        route = "models" if kind == "model" else "firmware"
        return self.client.post(
            f"/api/v1/artifacts/{route}",
            content=path.read_bytes(),
            headers={**headers, "Content-Type": "application/octet-stream"},
        )


def make_env(tmp_path: Path, *, clock: Clock | None = None, **settings: object) -> OtaEnv:
    clock = clock or Clock()
    data_dir = tmp_path / "fleet"
    config = ServerSettings.model_validate({"data_dir": data_dir, **settings})
    initialize_tuf(config, clock=clock)
    store = store_with_users(data_dir, now=1)
    tuf = TufRepository(data_dir / "tuf", clock=clock, lifetimes=tuf_lifetimes(config))
    registry = ArtifactRegistry(store, BlobStore(data_dir / "artifacts"), tuf=tuf, clock=clock)
    ca = FleetCA.create(data_dir / "ca", now=time.time())
    deltas = DeltaCache(registry.blobs, data_dir / "deltas")
    registry.on_added.append(deltas.on_registered(registry))
    context = ApiContext(
        settings=config,
        store=store,
        enrollment=Enrollment(store, ca, token_ttl_s=600, cert_validity_s=3600),
        artifacts=registry,
        tuf=tuf,
        deltas=deltas,
    )
    return OtaEnv(data_dir, TestClient(create_app(context)), store, registry, tuf, clock, config)


def model_version(out: Path, version: str, source: Path = DIGITS) -> Path:
    """``source`` re-packaged under another version (same weights), as a real build would."""
    pkg = read_package(source)
    manifest = Manifest.model_validate({**pkg.manifest.model_dump(), "version": version})
    path = out / f"{manifest.name}-{version}-{manifest.flavor}.efpkg"
    path.write_bytes(pack_package(manifest, dict(pkg.members)))
    return path


def add_digits(registry: ArtifactRegistry, packages: Path, versions: Sequence[str]) -> None:
    """digits ``versions`` into ``registry`` (and its TUF repository): 1.0.0 is the shipped
    package, the others are made from it in ``packages``."""
    packages.mkdir(parents=True, exist_ok=True)
    for version in versions:
        path = DIGITS if version == "1.0.0" else model_version(packages, version)
        registry.add_model(path, lineage={"source": "test"}, actor="test")
