"""What the hardening tests share: the API on a real store and CA whose login throttle
allows three attempts a minute (see :mod:`.api_kit` for its users)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from fleet_server.api import ApiContext, create_app
from fleet_server.config import ApiSettings
from fleet_server.store.base import Store

from .api_kit import api_context, store_with_users

MiB = 1024 * 1024


def throttled_api(folder: Path) -> tuple[TestClient, Store, ApiContext]:
    store = store_with_users(folder)
    ctx = api_context(folder, store, api=ApiSettings(login_attempts_per_minute=3))
    return TestClient(create_app(ctx)), store, ctx
