"""Artifact registry routes: push model packages and firmware bundles, list and read them.

Uploads are the raw file as the request body (``Content-Type:
application/octet-stream``), streamed to a temp file under the artifact root
with their own size limit (``artifacts.max_upload_bytes``) instead of the API's
1 MiB body limit, then verified by the same readers a device uses.  Pushing
needs ``operator``; the audit middleware records who pushed what.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from edgefleet_contract.errors import EdgefleetError, NotFound
from edgefleet_contract.package import read_package
from edgefleet_contract.summary import summarize

from ..auth import Principal
from ..registry import ArtifactRegistry, TooLarge
from ..registry.blobs import receive
from ..store.base import Artifact
from . import problems
from .context import ApiContext
from .deps import ctx, require

router = APIRouter(prefix="/artifacts", tags=["artifacts"])

UPLOAD_PATHS = ("/api/v1/artifacts/models", "/api/v1/artifacts/firmware")
"""Routes exempt from the API's 1 MiB body limit (they enforce their own)."""


class RegistryUnavailable(EdgefleetError):
    """This server runs without an artifact registry."""


class ArtifactOut(BaseModel):
    id: int
    kind: str
    name: str
    version: str
    flavor: str
    runtime: str | None
    hardware: list[str]
    sha256: str
    size: int
    filename: str
    target_path: str
    spec: str
    created_at: float
    uploaded_by: str
    lineage: dict[str, Any]
    tuf_signed: bool | None = Field(
        None,
        description="whether the signed TUF targets metadata lists this target with this "
        "sha256 (null when the server runs no TUF repository)",
    )


class ArtifactPage(BaseModel):
    items: list[ArtifactOut]
    total: int


def artifact_out(a: Artifact, signed: Mapping[str, Any] | None = None) -> ArtifactOut:
    """``signed``: the TUF targets (path -> TargetFile) to check the artifact against."""
    published = signed.get(a.target_path) if signed is not None else None
    signed_here = published is not None and published.hashes.get("sha256") == a.sha256
    return ArtifactOut(**vars(a), spec=a.spec, tuf_signed=None if signed is None else signed_here)


def signed_targets(registry: ArtifactRegistry) -> Mapping[str, Any] | None:
    """The targets the current signed metadata lists; read once per request."""
    return registry.tuf.targets().signed.targets if registry.tuf is not None else None


def registry_of(c: ApiContext) -> ArtifactRegistry:
    if c.artifacts is None:
        raise RegistryUnavailable("this server has no artifact registry configured")
    return c.artifacts


async def _push(request: Request, c: ApiContext, who: Principal, kind: str) -> Any:
    registry = registry_of(c)
    limit = c.settings.artifacts.max_upload_bytes
    with registry.blobs.temp_file() as tmp:
        try:
            await receive(request.stream(), tmp, limit=limit)
        except TooLarge as exc:
            return problems.problem(413, "Artifact too large", str(exc))
        lineage = {"source": "upload"}
        add = registry.add_model if kind == "model" else registry.add_firmware
        try:
            added = await run_in_threadpool(add, tmp, lineage=lineage, actor=who.username)
        except EdgefleetError as exc:
            raise type(exc)(_without_paths(str(exc), tmp)) from None
    return JSONResponse(artifact_out(added, signed_targets(registry)).model_dump(), status_code=201)


def _without_paths(message: str, tmp: Path) -> str:
    """A refusal as the uploader may see it: the server's own paths are none of their business."""
    for secret in (str(tmp), str(tmp.parent), tmp.name):
        message = message.replace(secret, "the uploaded file")
    return message


def _push_route(kind: str, path: str, doc: str) -> None:
    """``POST /artifacts/models`` and ``/firmware``: one upload route per kind, named
    ``push_<kind>`` (the audit's action and the OpenAPI operation)."""

    async def push(
        request: Request,
        c: ApiContext = Depends(ctx),
        who: Principal = Depends(require("operator")),
    ) -> Any:
        return await _push(request, c, who, kind)

    push.__doc__ = doc
    router.post(
        path,
        name=f"push_{kind}",
        status_code=201,
        response_model=ArtifactOut,
        openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}}},
    )(push)


_push_route(
    "model",
    "/models",
    "Upload a model package (.efpkg) as the raw body; it is verified, stored and signed.",
)
_push_route(
    "firmware",
    "/firmware",
    "Upload a firmware bundle (.efbundle) as the raw body; verified, stored and signed.",
)


@router.get("", response_model=ArtifactPage)
def list_artifacts(
    kind: str | None = Query(None, pattern="^(model|firmware)$"),
    name: str | None = Query(None, max_length=64),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    c: ApiContext = Depends(ctx),
    _: Principal = Depends(require("viewer")),
) -> ArtifactPage:
    """Registered artifacts, newest first, with their lineage."""
    registry = registry_of(c)
    items, total = registry.search(kind=kind, name=name, limit=limit, offset=offset)
    signed = signed_targets(registry)
    return ArtifactPage(items=[artifact_out(a, signed) for a in items], total=total)


@router.get("/{artifact_id}", response_model=ArtifactOut)
def get_artifact(
    artifact_id: int,
    c: ApiContext = Depends(ctx),
    _: Principal = Depends(require("viewer")),
) -> ArtifactOut:
    registry = registry_of(c)
    return artifact_out(registry.get(artifact_id), signed_targets(registry))


@router.get("/{artifact_id}/model")
def get_model_summary(
    artifact_id: int,
    c: ApiContext = Depends(ctx),
    _: Principal = Depends(require("viewer")),
) -> dict[str, Any]:
    """What a model package holds: task, inputs/outputs, quantization facts, size."""
    registry = registry_of(c)
    artifact = registry.get(artifact_id)
    path = registry.blob(artifact.sha256) if artifact.kind == "model" else None
    if path is None:
        raise NotFound(f"artifact {artifact_id} is not a stored model package")
    package = read_package(path, max_bytes=registry.max_model_bytes)
    return summarize(package.manifest, size=package.size)
