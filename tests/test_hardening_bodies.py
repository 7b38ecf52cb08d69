"""Hardening: request bodies are bounded, and read only after authentication.

Regression tests for the security review of issue 19: each failed before its fix.

The body-limit tests call the app as an ASGI application with a ``receive`` that
hands out a chunked body lazily, so they can count how much of it the server
actually pulled.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fleet_server.api import ApiContext
from fleet_server.store.base import Store

from .api_kit import login
from .hardening_kit import MiB, throttled_api


@pytest.fixture
def api(tmp_path: Path) -> tuple[TestClient, Store, ApiContext]:
    return throttled_api(tmp_path)


def asgi_post(
    client: TestClient, path: str, chunks: Iterator[bytes], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], int]:
    """POST a chunked body (no Content-Length) straight into the client's ASGI app.

    Returns the status, the JSON answer and how many body bytes the app pulled.
    """
    app = client.app
    assert isinstance(app, FastAPI)
    pulled = 0
    out: dict[str, Any] = {"status": 0, "body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *raw],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }

    async def run() -> None:
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)  # type: ignore[arg-type]

    asyncio.run(run())
    return int(out["status"]), json.loads(out["body"] or b"{}"), pulled


def _flood(total: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    yield b'{"username": "'
    for _ in range(total // chunk):
        yield b"a" * chunk


def test_a_chunked_body_is_bounded_without_content_length(
    api: tuple[TestClient, Store, ApiContext],
) -> None:
    client, _, _ = api
    status, body, pulled = asgi_post(client, "/api/v1/auth/login", _flood(64 * MiB))
    assert status == 413, body
    assert "limited to" in body["detail"]
    assert pulled <= MiB + 64 * 1024  # the limit plus at most one chunk, not 64 MiB


def test_the_body_of_an_unauthenticated_request_is_not_read(
    api: tuple[TestClient, Store, ApiContext],
) -> None:
    client, store, _ = api
    status, body, pulled = asgi_post(client, "/api/v1/devices", _flood(32 * MiB))
    assert status == 401, body  # not 422 after reading 32 MiB
    assert pulled == 0
    # and a forged token is refused the same way; the refusal is audited
    status, _, pulled = asgi_post(
        client, "/api/v1/devices", _flood(MiB), {"Authorization": "Bearer eft_forged"}
    )
    assert (status, pulled) == (401, 0)
    assert any(e.outcome == "denied" for e in store.list_audit().items)
    # an authenticated caller's small body is still read and parsed normally
    headers = login(client, "olga")
    r = client.post("/api/v1/devices", headers=headers, json={"id": "ok-1"})
    assert r.status_code == 201
    r = client.post("/api/v1/devices", headers=headers, content=b"{")
    assert r.status_code == 422


def test_only_the_listed_routes_take_a_body_from_anyone() -> None:
    """The guard authenticates every other body request first; keep its list honest."""
    from fastapi.routing import APIRoute

    from fleet_server.api import deps, routes_auth, routes_enroll
    from fleet_server.api.guard import PUBLIC_BODY_PATHS
    from fleet_server.console import routes as console_routes

    def uses_principal(dependant: Any) -> bool:
        return dependant.call is deps.principal or any(
            uses_principal(d) for d in dependant.dependencies
        )

    import fleet_server.api as api_pkg

    public: set[str] = set()
    modules = [getattr(api_pkg, n) for n in dir(api_pkg) if n.startswith("routes_")]
    for module in [*modules, console_routes, routes_auth, routes_enroll]:
        for attr in ("router", "admin"):
            router = getattr(module, attr, None)
            for route in getattr(router, "routes", ()):
                if not isinstance(route, APIRoute):
                    continue
                if (route.methods or set()) & {
                    "POST",
                    "PUT",
                    "PATCH",
                    "DELETE",
                } and not uses_principal(route.dependant):
                    public.add("/api/v1" + route.path)
    assert public == set(PUBLIC_BODY_PATHS)
