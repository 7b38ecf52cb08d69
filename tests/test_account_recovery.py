"""Admin password recovery on the server host: ``fleet-server users reset-password``, and
``init --admin-password-stdin`` on an initialized dir never claims a change it did not make."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet_server.auth import verify_password
from fleet_server.store import open_store
from fleet_server.store.base import ApiToken

from .harness import run_text

BIN = Path(sys.executable).parent
FIRST = "first-admin-password"
SECOND = "second-admin-password"


def _fleet_server(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run_text([BIN / "fleet-server", *args], stdin=stdin)


def _admin_password_is(data_dir: Path, password: str) -> bool:
    store = open_store(data_dir / "fleet.db")
    try:
        return verify_password(password, store.get_user("admin").password_hash)
    finally:
        store.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recovery") / "fleet"
    done = _fleet_server("init", "--data-dir", str(path), "--admin-password-stdin", stdin=FIRST)
    assert done.returncode == 0, done.stderr
    return path


def test_init_again_with_another_password_says_nothing_changed(data_dir: Path) -> None:
    done = _fleet_server(
        "init", "--data-dir", str(data_dir), "--admin-password-stdin", stdin=SECOND
    )
    assert done.returncode == 2
    assert "admin password was NOT changed" in done.stderr
    assert "fleet-server users reset-password admin" in done.stderr
    assert "initialized in" not in done.stdout
    assert _admin_password_is(data_dir, FIRST)
    # The same password again is what was asked for: init stays idempotent.
    same = _fleet_server("init", "--data-dir", str(data_dir), "--admin-password-stdin", stdin=FIRST)
    assert same.returncode == 0, same.stderr


def test_reset_password_sets_it_and_ends_the_sessions(data_dir: Path) -> None:
    store = open_store(data_dir / "fleet.db")
    now = time.time()
    store.create_api_token(
        ApiToken(
            id="t-old",
            username="admin",
            name="laptop",
            token_hash="h" * 64,
            created_at=now,
            expires_at=now + 3600,
        )
    )
    store.close()
    done = _fleet_server(
        "users",
        "reset-password",
        "admin",
        "--data-dir",
        str(data_dir),
        "--password-stdin",
        stdin=SECOND + "\n",
    )
    assert done.returncode == 0, done.stderr
    assert "password of 'admin' reset; 1 session(s) ended" in done.stdout
    assert _admin_password_is(data_dir, SECOND)
    store = open_store(data_dir / "fleet.db")
    try:
        assert all(t.revoked_at is not None for t in store.list_api_tokens("admin"))
        entries = store.list_audit(limit=10).items
        assert any(
            e.action == "users.reset_password" and e.target == "admin" and e.outcome == "ok"
            for e in entries
        )
    finally:
        store.close()


def test_reset_password_generates_one_when_none_is_given(data_dir: Path) -> None:
    done = _fleet_server("users", "reset-password", "admin", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    generated = done.stdout.split("new password (shown once, change it): ")[1].strip()
    assert len(generated) >= 12 and _admin_password_is(data_dir, generated)


def test_reset_password_of_an_unknown_user_names_the_known_ones(data_dir: Path) -> None:
    done = _fleet_server("users", "reset-password", "root", "--data-dir", str(data_dir))
    assert done.returncode == 1
    assert "no user 'root' (users: admin)" in done.stderr
    assert "Traceback" not in done.stderr


def test_reset_password_on_an_uninitialized_dir_is_a_clear_error(tmp_path: Path) -> None:
    done = _fleet_server("users", "reset-password", "admin", "--data-dir", str(tmp_path))
    assert done.returncode == 2
    assert "run `fleet-server init` first" in done.stderr
