"""Property-based fuzzing of the whole OpenAPI surface, as an admin: no input may cause a 5xx.

Bounded (a few dozen examples per operation) so the suite stays within a minute
or two on a small machine; the same store is shared by all operations, so
later calls meet the devices, users and tokens earlier ones created.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from fleet_server.api import create_app
from fleet_server.auth import Authenticator, hash_password
from fleet_server.store import open_store

from .api_kit import Outbox, api_context

_SKIP = {
    # These would revoke the fuzzer's own token and turn everything after into 401s.
    ("DELETE", "/api/v1/tokens/{token_id}"),
    ("POST", "/api/v1/auth/logout"),
}


def _app(directory: Path) -> tuple[FastAPI, str]:
    """The app on a real store and CA in ``directory``, and an admin token for it."""
    store = open_store(directory / "fleet.db")
    store.create_user("root", role="admin", password_hash=hash_password("root-password"), now=0)
    store.create_device("fz-1", name="fz-1", tags={"a": "b"}, now=0)
    ctx = api_context(directory, store, commands=Outbox(), training=_training(store, directory))
    token, _ = Authenticator(store).issue_token(store.get_user("root"), name="fuzz", ttl_s=3600)
    return create_app(ctx), token


def _training(store: Any, directory: Path) -> Any:
    """A real training service whose frames go nowhere (no device is ever online here)."""
    from fleet_server.federation.candidate import digits_heldout
    from fleet_server.federation.packages import DIST, find_package
    from fleet_server.federation.runner import TrainingService

    return TrainingService(
        store,
        lambda device_id, frame: None,
        packages=lambda name, version: find_package(name, [DIST], version=version),
        heldout=digits_heldout,
        candidates_dir=directory / "candidates",
        build_candidates=False,
    )


# schemathesis needs the schema when the module is collected, before pytest's
# tmp_path exists, so the fuzz store lives in its own temporary directory.
_DIR = Path(tempfile.mkdtemp(prefix="edgefleet-fuzz-"))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)
app, _TOKEN = _app(_DIR)
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case[Any]) -> None:
    if (case.method, case.path) in _SKIP:
        return
    case.call_and_validate(
        headers={"Authorization": f"Bearer {_TOKEN}"}, checks=[not_a_server_error]
    )
