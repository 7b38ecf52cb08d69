"""The TUF repository over HTTP, and the admin routes that change its root.

``/tuf/...`` is what devices read and is unauthenticated on purpose: every
byte is verified by the device's TUF client against metadata chained to the
root it got at enrollment, so the server's transport adds nothing to its
integrity, and devices need no API credential to update.

* ``GET /tuf/metadata/{N}.root.json | timestamp.json | {N}.snapshot.json | {N}.targets.json``
* ``GET /tuf/targets/{dir}/{sha256}.{basename}`` (consistent-snapshot target URL;
  ``Range: bytes=N-`` answers 206, a range outside the file 416)
* ``GET /tuf/deltas/{from_sha256}/{to_sha256}`` (bsdiff4 patch, or 404): only
  patches made when the target was registered; a request never computes one

Under ``/api/v1/tuf`` (authenticated): read the root and online keys,
ask for a root proposal that rotates keys (admin), install a root signed
offline (admin).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from edgefleet_contract.errors import EdgefleetError, NotFound, SigningError

from ..auth import Principal
from ..tuf import TufRepository
from ..tuf import keys as tuf_keys
from .context import ApiContext
from .deps import ctx, require

public = APIRouter(prefix="/tuf", tags=["tuf"])
admin = APIRouter(prefix="/tuf", tags=["tuf"])

_NO_CACHE = {"Cache-Control": "no-store"}
_IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


class TufUnavailable(EdgefleetError):
    """This server publishes no TUF repository."""


def repo_of(c: ApiContext) -> TufRepository:
    if c.tuf is None:
        raise TufUnavailable("this server publishes no TUF repository")
    return c.tuf


@public.get("/metadata/{name}", response_class=FileResponse)
def metadata(name: str, c: ApiContext = Depends(ctx)) -> Response:
    path = repo_of(c).metadata_file(name)
    if path is None:
        raise NotFound(f"no TUF metadata {name[:80]!r}")
    # Versioned files never change; timestamp.json changes and must not be cached.
    headers = _NO_CACHE if name == "timestamp.json" else _IMMUTABLE
    return FileResponse(path, media_type="application/json", headers=headers)


@public.get("/targets/{target:path}", response_class=FileResponse)
def target(target: str, c: ApiContext = Depends(ctx)) -> Response:
    directory, _, leaf = target.rpartition("/")
    sha256, dot, basename = leaf.partition(".")
    registry = c.artifacts
    if registry is None or not dot or not directory:
        raise NotFound(f"no TUF target {target[:120]!r}")
    expected = f"{directory}/{basename}"
    found = registry.store.find_artifacts(sha256=sha256, limit=100).items
    blob = registry.blob(sha256)
    if blob is None or not any(a.target_path == expected for a in found):
        raise NotFound(f"no TUF target {target[:120]!r}")
    return FileResponse(blob, media_type="application/octet-stream", headers=_IMMUTABLE)


@public.get("/deltas/{source}/{dest}", response_class=FileResponse)
def delta(source: str, dest: str, c: ApiContext = Depends(ctx)) -> Response:
    registry, deltas = c.artifacts, c.deltas
    if registry is None or deltas is None:
        raise NotFound("this server offers no deltas")
    for sha in (source, dest):
        if not registry.store.find_artifacts(sha256=sha, limit=1).items:
            raise NotFound(f"no artifact with sha256 {sha[:64]!r}")
    patch = deltas.patch(source, dest)
    if patch is None:
        raise NotFound(
            f"no delta from {source[:12]} to {dest[:12]} (none was made when the target was "
            "registered, or it is not smaller than the target): download the full target"
        )
    return FileResponse(patch, media_type="application/octet-stream", headers=_IMMUTABLE)


# ------------------------------------------------------------------ admin --


class RootProposalIn(BaseModel):
    rotate: list[str] = Field(default_factory=list, max_length=3)
    """Online roles to give new keys: targets, snapshot, timestamp."""
    root_keys: list[dict[str, Any]] | None = Field(None, max_length=32)
    """New root public keys (entries of ``root-keys.json``), to rotate the root keys."""
    root_threshold: int | None = Field(None, ge=1, le=32)


@admin.get("/root")
def current_root(
    c: ApiContext = Depends(ctx), _: Principal = Depends(require("viewer"))
) -> dict[str, Any]:
    """The current root metadata (the same bytes as ``/tuf/metadata/{N}.root.json``)."""
    doc: dict[str, Any] = json.loads(repo_of(c).root_bytes())
    return doc


@admin.get("/keys")
def online_keys(
    c: ApiContext = Depends(ctx), _: Principal = Depends(require("viewer"))
) -> dict[str, Any]:
    """The online public keys a root must list (for `fleetctl keys sign-root`)."""
    repo = repo_of(c)
    return {
        "root_version": repo.root_version(),
        "online": {role: tuf_keys.public_doc(k) for role, k in repo.online_keys().items()},
    }


@admin.post("/root-proposals")
def propose_root(
    body: RootProposalIn,
    c: ApiContext = Depends(ctx),
    _: Principal = Depends(require("admin")),
) -> dict[str, Any]:
    """An unsigned next root (new online keys for ``rotate``); sign it offline, then install."""
    root_keys = None
    if body.root_keys is not None:
        root_keys = [tuf_keys.key_from_doc(doc) for doc in body.root_keys]
    proposal = repo_of(c).propose_root(
        rotate=body.rotate, root_keys=root_keys, root_threshold=body.root_threshold
    )
    doc: dict[str, Any] = proposal.to_dict()
    return doc


@admin.post("/root")
async def install_root(
    request: Request,
    c: ApiContext = Depends(ctx),
    _: Principal = Depends(require("admin")),
) -> dict[str, Any]:
    """Publish a root signed offline (the body is the signed root.json)."""
    data = await request.body()
    if not data:
        raise SigningError("send the signed root.json as the request body")
    installed = await run_in_threadpool(repo_of(c).install_root, data)
    return {"version": installed.signed.version, "expires": installed.signed.expires.isoformat()}
