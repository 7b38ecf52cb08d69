"""Model cards: ``GET /models/{name}/{version}/card`` as JSON, or Markdown with ``?format=md``.

One card per registered version, whatever its flavours (see
:mod:`fleet_server.registry.card`).  Viewers may read it, like the artifact
list; the fleet figures in it are computed when it is asked for, from at most a
day of telemetry of a bounded number of devices.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from edgefleet_contract.errors import NotFound

from ..auth import Principal
from ..registry.card import markdown
from ..registry.cards import card_of
from .context import ApiContext
from .deps import ctx, require
from .routes_artifacts import registry_of

router = APIRouter(prefix="/models", tags=["models"])

Name = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Version = Annotated[str, Path(pattern=r"^[0-9A-Za-z.+-]{1,64}$")]


@router.get("/{name}/{version}/card", response_model=None)
async def model_card(
    name: Name,
    version: Version,
    format: Literal["json", "md"] = Query("json", description="json, or md for Markdown"),
    who: Principal = Depends(require("viewer")),
    c: ApiContext = Depends(ctx),
) -> dict[str, Any] | PlainTextResponse:
    registry = registry_of(c)
    page = c.store.find_artifacts(kind="model", name=name, version=version, limit=100)
    if not page.items:
        raise NotFound(f"no model {name}@{version} in the registry (`fleetctl models list`)")
    artifacts = sorted(page.items, key=lambda a: a.flavor)
    card = await run_in_threadpool(
        card_of, c.store, artifacts, registry.cards, registry.blob, now=c.clock()
    )
    if format == "md":
        return PlainTextResponse(markdown(card), media_type="text/markdown; charset=utf-8")
    return card
