"""``fleet-server`` start-up failures: one line naming the port or path and the setting,
exit 2, and nothing left running (no orphan mosquitto holding the broker port)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet_common.backoff import Backoff
from fleet_server.broker import ManagedBroker
from fleet_server.config import ServerSettings
from fleet_server.server import FleetServer, initialize

from .harness import ADMIN_PASSWORD, Pki, free_port, server_settings, start_broker, wait_for

BIN = Path(sys.executable).parent


def _mosquittos_of(data_dir: Path) -> list[int]:
    """Pids of mosquitto processes running with a config under ``data_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"mosquitto" in cmdline and str(data_dir).encode() in cmdline:
            found.append(int(entry.name))
    return found


def _fleet_server(
    *args: str, data_dir: Path, ports: tuple[int, int], stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FLEET_API__PORT": str(ports[0]),
        "FLEET_BROKER__PORT": str(ports[1]),
    }
    return subprocess.run(
        [str(BIN / "fleet-server"), *args, "--data-dir", str(data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture(scope="module")
def initialized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("startup") / "fleet"
    done = _fleet_server(
        "init",
        "--admin-password-stdin",
        data_dir=data_dir,
        ports=(free_port(), free_port()),
        stdin=ADMIN_PASSWORD + "\n",
    )
    assert done.returncode == 0, done.stderr
    return data_dir


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket listening on a free loopback port: the port is taken."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s


@pytest.mark.parametrize(
    ("taken", "setting", "env"),
    [("broker", "broker.port", "FLEET_BROKER__PORT"), ("API", "api.port", "FLEET_API__PORT")],
)
def test_a_taken_port_is_refused_naming_it_and_nothing_is_left_running(
    initialized: Path, listener: socket.socket, taken: str, setting: str, env: str
) -> None:
    port = listener.getsockname()[1]
    ports = (free_port(), port) if taken == "broker" else (port, free_port())
    done = _fleet_server("run", data_dir=initialized, ports=ports)
    assert done.returncode == 2, done.stderr
    assert f"{taken} port 127.0.0.1:{port} is already in use" in done.stderr
    assert setting in done.stderr and env in done.stderr
    assert "Traceback" not in done.stderr
    assert "running" not in done.stdout
    assert _mosquittos_of(initialized) == []


def test_a_failed_start_stops_the_broker_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = server_settings(tmp_path / "fleet")
    assert isinstance(settings, ServerSettings)
    initialize(settings, admin_password=ADMIN_PASSWORD)
    server = FleetServer(settings)

    def broken_reload() -> None:
        assert server.broker is not None and server.broker.pid is not None  # it was running
        raise RuntimeError("rollout state unreadable")

    monkeypatch.setattr(server.rollouts, "reload", broken_reload)
    with pytest.raises(RuntimeError):
        server.start()
    assert _mosquittos_of(settings.data_dir) == []
    assert not server.link.connected.is_set()


def test_a_data_dir_that_is_a_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "fleet"
    path.write_text("not a directory")
    for command in ("init", "run"):
        done = _fleet_server(command, data_dir=path, ports=(free_port(), free_port()))
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().count("\n") == 0, done.stderr
        assert f"data directory {path} is a file" in done.stderr
        assert "FLEET_DATA_DIR" in done.stderr


def test_a_data_dir_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "fleet"
    done = _fleet_server("init", data_dir=path, ports=(free_port(), free_port()))
    assert done.returncode == 2, done.stderr
    assert f"cannot create data directory {path}" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unwritable_data_dir_is_one_line_and_exit_2() -> None:
    private = [p for p in BIN.resolve().parents if not p.stat().st_mode & 0o001]
    if os.geteuid() == 0 and private:  # e.g. a checkout under `mktemp -d`
        pytest.skip(f"{private[0]} is private, so the user nobody cannot start the server")
    # Not under tmp_path: its parents are private to this user, so another could not reach it.
    top = Path(tempfile.mkdtemp(prefix="fleet-unwritable-"))
    top.chmod(0o755)
    path = top / "fleet"
    path.mkdir(mode=0o555)
    command = [str(BIN / "fleet-server"), "init", "--data-dir", str(path)]
    if os.geteuid() == 0:  # root writes anywhere: run as nobody instead
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    try:
        # Not measured by coverage (`make test`): that user cannot write its data file.
        env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=120, cwd=top, env=env
        )
    finally:
        shutil.rmtree(top)
    assert done.returncode == 2, done.stderr
    assert f"data directory {path} is not writable" in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr


def test_the_broker_supervisor_backs_off_and_gives_up(pki: Pki, tmp_path: Path) -> None:
    broker = start_broker(pki, tmp_path / "broker")
    broker.stop()
    reasons: list[str] = []
    supervised = ManagedBroker(
        broker.layout,
        ca_file=pki.ca.cert_file,
        bind="127.0.0.1",
        port=broker.port,
        on_give_up=reasons.append,
        give_up_after=3,
        backoff=Backoff(initial=0.05, maximum=0.2),
    )
    supervised.start()
    try:
        # From now on every restart reads a configuration mosquitto refuses.
        broker.layout.conf.write_text("listener not-a-port\n")
        supervised.kill_hard()
        wait_for(lambda: reasons, timeout=60, what="the supervisor to give up")
        assert "failed 3 times in a row" in reasons[0]
        assert supervised.failure == reasons[0]
        assert supervised.restarts == 0
        time.sleep(0.5)  # nothing restarts it after giving up
        assert _mosquittos_of(broker.layout.directory) == []
    finally:
        supervised.stop()
