"""Hardening: the server's and the agent's data directories and databases are private.

Regression tests for the security review of issue 19: each failed before its fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet_server.config import ServerSettings


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_server_data_dir_and_database_are_private_whatever_they_were(tmp_path: Path) -> None:
    import os

    from fleet_server.server import FleetServer, initialize

    from .harness import ADMIN_PASSWORD, server_settings

    data = tmp_path / "fleet"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # made earlier by hand or a package
    settings = server_settings(data)
    assert isinstance(settings, ServerSettings)
    initialize(settings, admin_password=ADMIN_PASSWORD)
    assert _mode(data) == 0o700
    db = Path(settings.database_url)
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        assert not path.exists() or _mode(path) == 0o600, path
    os.chmod(data, 0o755)
    os.chmod(db, 0o644)
    server = FleetServer(settings)  # an older release left them open: starting fixes it
    try:
        assert (_mode(data), _mode(db)) == (0o700, 0o600)
    finally:
        server.deltas.close()
        server.store.close()


def test_agent_data_dir_spool_and_samples_are_private(pki: Any, tmp_path: Path) -> None:
    import os

    from agent.config import AgentSettings, LocalApiSettings
    from agent.daemon import Agent
    from agent.identity import Identity

    from .agentproc import DIST, device_dir

    data = device_dir(pki, tmp_path / "dev", "priv-1", 1)
    os.chmod(data, 0o755)
    for name in ("spool.db", "samples.db"):
        (data / name).touch()
        os.chmod(data / name, 0o644)
    settings = AgentSettings(
        data_dir=data,
        model=DIST / "digits-1.0.0-onnx-int8.efpkg",
        local_api=LocalApiSettings(port=0),
    )
    agent = Agent(settings, Identity.load(data))
    try:
        assert _mode(data) == 0o700
        for name in ("spool.db", "samples.db"):
            assert _mode(data / name) == 0o600, name
            wal = data / f"{name}-wal"
            assert not wal.exists() or _mode(wal) == 0o600
    finally:
        agent.spool.close()
        agent.samples.close()
