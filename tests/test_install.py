"""The install story: the server's systemd unit, container image and compose file, units
whose documentation link is our own docs, and agent-only installs without a crashing
``fleet-server``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest
import yaml

from .harness import require

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOC_DIR = "/opt/edgefleet/share/doc/edgefleet/"


def test_an_agent_only_install_names_the_missing_extra(tmp_path: Path) -> None:
    # An agent-only install has no uvicorn: a module that cannot be imported stands in for it.
    (tmp_path / "uvicorn.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'uvicorn'\", name='uvicorn')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [str(BIN / "fleet-server"), "run"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 2
    assert "pip install 'edgefleet[server]'" in done.stderr and "uvicorn" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("package", "unit"), [("fleet_server", "fleet-server.service"), ("agent", "edge-agent.service")]
)
def test_units_are_valid_and_link_our_docs(tmp_path: Path, package: str, unit: str) -> None:
    text = (resources.files(package) / unit).read_text()
    docs = re.findall(r"^Documentation=(\S+)$", text, re.M)
    assert docs and all(d.startswith(f"file:{DOC_DIR}") for d in docs), docs
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "data-files"
    ]["share/doc/edgefleet"]
    for doc in docs:
        name = doc.rsplit("/", 1)[1]
        assert f"docs/{name}" in shipped and (ROOT / "docs" / name).is_file(), doc
    for option in ("Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert option in text, option
    require(shutil.which("systemd-analyze"), "systemd-analyze", "run .ci/setup-system")
    command = unit.removesuffix(".service")
    path = tmp_path / unit
    path.write_text(text.replace(f"/opt/edgefleet/bin/{command}", str(BIN / command)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in result.stderr.splitlines() if unit in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_the_server_unit_stops_on_configuration_errors() -> None:
    text = (resources.files("fleet_server") / "fleet-server.service").read_text()
    assert "RestartPreventExitStatus=2" in text  # a taken port or bad config: no restart loop
    assert "LimitNOFILE=65536" in text and "ReadWritePaths=/var/lib/fleet" in text


def test_the_container_image_and_compose_file() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER edgefleet-server$", dockerfile, re.M)  # not root
    assert "pip install --no-cache-dir '.[server]'" in dockerfile
    assert "apt-get install -y --no-install-recommends mosquitto" in dockerfile
    assert re.search(r"^EXPOSE 8080 8883$", dockerfile, re.M)
    assert "/healthz" in dockerfile and "VOLUME /var/lib/fleet" in dockerfile
    for copied in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (ROOT / copied).exists(), copied
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    server = compose["services"]["fleet-server"]
    assert server["build"] == "." and set(server["ports"]) == {"8080:8080", "8883:8883"}
    assert "fleet-data:/var/lib/fleet" in server["volumes"] and "fleet-data" in compose["volumes"]
    assert "fleet-server init && exec fleet-server run" in " ".join(server["entrypoint"])
    # The settings the image and compose file set are real settings.
    from edgefleet_contract.config import unknown_environment
    from fleet_server.config import ServerSettings

    env = dict(re.findall(r"(FLEET_[A-Z_]+)=(\S+)", dockerfile)) | server["environment"]
    assert unknown_environment(ServerSettings, env) == []
