"""Configuration errors name the field and the reason; daemons exit non-zero, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import AgentSettings
from edgefleet_common.config import load_settings
from edgefleet_contract.errors import ConfigError

BIN = Path(sys.executable).parent


def test_file_and_environment_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("telemetry_interval_s = 5\n[spool]\nmax_bytes = 100000\n")
    assert load_settings(AgentSettings, cfg).telemetry_interval_s == 5
    monkeypatch.setenv("EDGE_AGENT_SPOOL__MAX_BYTES", "200000")
    assert load_settings(AgentSettings, cfg).spool.max_bytes == 200000


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("telemetry_interval_s = -1\n", "telemetry_interval_s: Input should be greater"),
        ("[spool]\nmax_bytes = 'lots'\n", "spool.max_bytes"),
        ("telemetry_intervall_s = 3\n", "telemetry_intervall_s: unknown setting"),
        ("this is = not toml [\n", "not valid TOML"),
    ],
)
def test_errors_name_the_field(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(AgentSettings, cfg)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    ("command", "env_name", "needle"),
    [
        (["fleet-server", "run"], "FLEET_API__PORT", "api.port"),
        (["edge-agent", "run"], "EDGE_AGENT_THREADS", "threads"),
    ],
)
def test_daemons_exit_2_without_traceback(
    tmp_path: Path, command: list[str], env_name: str, needle: str
) -> None:
    env = {**os.environ, env_name: "not-a-number"}
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:], "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert needle in result.stderr and env_name in result.stderr
    assert "Traceback" not in result.stderr


def test_agent_not_enrolled_exits_3(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "edge-agent"), "run", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert "edge-agent enroll" in result.stderr and "Traceback" not in result.stderr
