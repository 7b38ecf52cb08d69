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


def test_environment_nesting_json_and_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("THREADS = 3\n[spool]\ndrain_burst = 7\n")
    monkeypatch.setenv("edge_agent_threads", "4")
    monkeypatch.setenv("EDGE_AGENT_SPOOL", '{"max_bytes": 100000}')
    monkeypatch.setenv("EDGE_AGENT_SPOOL__MAX_AGE_S", "9")
    monkeypatch.setenv("EDGE_AGENT_BROKER__ENDPOINTS", '["h:1", "g:2"]')
    monkeypatch.setenv("EDGE_AGENT_UPDATES__FIRMWARE_COMMANDS__INSTALL", '["x", "{image}"]')
    settings = load_settings(AgentSettings, cfg, data_dir=tmp_path)
    assert settings.threads == 4 and settings.data_dir == tmp_path
    assert (settings.spool.max_bytes, settings.spool.max_age_s) == (100000, 9)
    assert settings.spool.drain_burst == 7  # the file's value, merged key by key
    assert settings.broker.alternates() == (("h", 1), ("g", 2))
    assert settings.updates.firmware_commands == {"install": ["x", "{image}"]}
    assert AgentSettings().threads == 4  # constructing one reads the environment too


def test_environment_json_error_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AGENT_BROKER__ENDPOINTS", "h:1")
    with pytest.raises(ConfigError, match="EDGE_AGENT_BROKER__ENDPOINTS is not valid JSON"):
        load_settings(AgentSettings)
