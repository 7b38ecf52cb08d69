"""Daemon logs: one line per event, text on a terminal and JSON otherwise, Flower's lines
once, HTTP client request lines only at DEBUG, misspelled environment variables warned."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from agent.config import AgentSettings
from edgefleet_common.config import unknown_environment
from fleet_server.config import ServerSettings

BIN = Path(sys.executable).parent

SCRIPT = """
import logging, sys
from edgefleet_common import logs
logs.configure(sys.argv[1], "auto")
import flwr.common.logger  # installs Flower's own coloured console handler on import
logging.getLogger("flwr").info("flower says hello")
logging.getLogger("httpx").info("HTTP Request: GET http://x/ 200 OK")
logging.getLogger("edge").info("agent up")
"""


def _run(level: str, *, tty: bool) -> str:
    """stderr of SCRIPT, written to a pipe or to a pseudo-terminal."""
    command = [sys.executable, "-c", SCRIPT, level]
    if not tty:
        return subprocess.run(command, capture_output=True, text=True, timeout=120).stderr
    leader, follower = pty.openpty()
    try:
        subprocess.run(command, stderr=follower, stdout=subprocess.DEVNULL, timeout=120)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def test_json_in_a_pipe_each_event_once_and_no_request_chatter() -> None:
    lines = [json.loads(line) for line in _run("INFO", tty=False).splitlines()]
    messages = [entry["msg"] for entry in lines]
    assert messages.count("flower says hello") == 1
    assert "agent up" in messages
    assert not any("HTTP Request" in m for m in messages)


def test_text_on_a_terminal_and_request_lines_at_debug() -> None:
    text = _run("DEBUG", tty=True)
    lines = [line for line in text.splitlines() if line.strip()]
    assert not any(line.startswith("{") for line in lines), text
    assert sum("flower says hello" in line for line in lines) == 1, text
    assert "\x1b[" not in text  # Flower's colours are gone with its handler
    assert any("HTTP Request" in line for line in lines)


def test_misspelled_environment_variables_are_named_with_the_right_spelling() -> None:
    env = {"FLEET_API_PORT": "9000", "FLEET_API__PORT": "9001", "FLEET_NOPE": "1", "HOME": "/"}
    assert unknown_environment(ServerSettings, env) == [
        "FLEET_API_PORT is not a setting and is ignored; did you mean FLEET_API__PORT?",
        "FLEET_NOPE is not a setting and is ignored",
    ]
    agent_env = {"EDGE_AGENT_THREAD": "2", "EDGE_AGENT_LOCAL_API__PORT": "1", "EDGE_AGENT_X": ""}
    warned = unknown_environment(AgentSettings, agent_env)
    assert warned[0].endswith("did you mean EDGE_AGENT_THREADS?") and len(warned) == 2


def test_the_daemon_prints_the_warning(tmp_path: Path) -> None:
    env = {**os.environ, "FLEET_BROKR__PORT": "1884"}
    done = subprocess.run(
        [str(BIN / "fleet-server"), "run", "--data-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (
        "warning: FLEET_BROKR__PORT is not a setting and is ignored; did you mean "
        "FLEET_BROKER__PORT?" in done.stderr
    )
    assert done.returncode == 2  # and the missing data dir is still the error
