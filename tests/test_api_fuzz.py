"""Property-based fuzzing of the whole OpenAPI surface: no input may cause a 5xx."""

from __future__ import annotations

import time
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from fleet_server.api import ApiContext, create_app
from fleet_server.auth import Authenticator, hash_password
from fleet_server.config import ServerSettings
from fleet_server.enrollment import Enrollment
from fleet_server.pki import FleetCA
from fleet_server.store import open_store

from .test_api import Outbox

_DIR = Path(__import__("tempfile").mkdtemp(prefix="edgefleet-fuzz-"))
_store = open_store(_DIR / "fleet.db")
_store.create_user("root", role="admin", password_hash=hash_password("root-password"), now=0)
_store.create_device("fz-1", name="fz-1", tags={"a": "b"}, now=0)
_ca = FleetCA.create(_DIR / "ca", now=time.time())
_ctx = ApiContext(
    settings=ServerSettings(data_dir=_DIR),
    store=_store,
    commands=Outbox(),
    enrollment=Enrollment(_store, _ca, token_ttl_s=600, cert_validity_s=3600),
)
_TOKEN, _ = Authenticator(_store).issue_token(_store.get_user("root"), name="fuzz", ttl_s=3600)
app = create_app(_ctx)
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    if (case.method, case.path) in {
        ("DELETE", "/api/v1/tokens/{token_id}"),
        ("POST", "/api/v1/auth/logout"),
    }:
        return  # would revoke the fuzzer's own token and turn the rest into 401s
    case.call_and_validate(
        headers={"Authorization": f"Bearer {_TOKEN}"}, checks=[not_a_server_error]
    )
