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
    ("package", "unit"),
    [
        ("fleet_server", "fleet-server.service"),
        ("fleet_server", "fleet-server@.service"),
        ("fleet_server", "fleet-broker-authz.service"),
        ("agent", "edge-agent.service"),
    ],
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
    instance = unit.replace("@.", "@api-1.")  # a template is verified as one of its instances
    path = tmp_path / instance
    path.write_text(re.sub(r"/opt/edgefleet/bin/(\S+)", lambda m: str(BIN / m[1]), text))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in result.stderr.splitlines() if instance in line]
    assert result.returncode == 0 and not problems, result.stderr


@pytest.mark.parametrize("unit", ["fleet-server.service", "fleet-server@.service"])
def test_the_server_units_stop_on_configuration_errors(unit: str) -> None:
    text = (resources.files("fleet_server") / unit).read_text()
    assert "RestartPreventExitStatus=2" in text  # a taken port or bad config: no restart loop
    assert "LimitNOFILE=65536" in text and "ReadWritePaths=/var/lib/fleet" in text


def test_the_template_unit_names_the_replica_and_reads_its_role() -> None:
    text = (resources.files("fleet_server") / "fleet-server@.service").read_text()
    assert "Environment=FLEET_REPLICA=%i" in text
    assert "EnvironmentFile=/etc/edgefleet/replicas/%i.env" in text
    from fleet_server.cli import run

    role = next(p for p in run.params if p.name == "role")
    assert role.envvar == "FLEET_ROLE"  # what the instance's env file sets


def test_the_container_image_and_compose_file(monkeypatch: pytest.MonkeyPatch) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER edgefleet-server$", dockerfile, re.M)  # not root
    assert "pip install --no-cache-dir '.[server]'" in dockerfile
    assert "apt-get install -y --no-install-recommends mosquitto" in dockerfile
    assert re.search(r"^EXPOSE 8080 8883$", dockerfile, re.M)
    assert "/healthz" in dockerfile and "VOLUME /var/lib/fleet" in dockerfile
    for copied in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (ROOT / copied).exists(), copied
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    init = services["init"]
    assert init["build"] == "." and "fleet-server init" in " ".join(init["entrypoint"])
    assert "8883:8883" in services["broker"]["ports"]
    roles = {name: s["command"][2] for name, s in services.items() if "command" in s}
    assert sorted(roles.values()) == ["api", "api", "ingest", "ingest", "worker", "worker"]
    replicas = yaml.safe_load(init["environment"]["FLEET_BROKER__REPLICAS"])
    assert sorted(replicas) == sorted(roles)  # every replica is in the broker's ACL
    for name in roles:
        assert services[name]["environment"]["FLEET_REPLICA"] == name
        assert "fleet-data:/var/lib/fleet" in services[name]["volumes"]  # one shared data dir
    assert "fleet-data" in compose["volumes"]
    # The settings the image and compose file set are real settings.
    from edgefleet_common.config import unknown_environment
    from fleet_server.config import ServerSettings

    for service in services.values():
        if service.get("image") != "edgefleet-server":
            continue
        env = dict(re.findall(r"(FLEET_[A-Z_]+)=(\S+)", dockerfile)) | service["environment"]
        env.pop("FLEET_ROLE", None)
        assert unknown_environment(ServerSettings, env) == []
    for key, value in services["api-1"]["environment"].items():
        monkeypatch.setenv(key, str(value))  # and their values parse
    settings = ServerSettings()
    assert settings.database_url.startswith("postgresql://") and settings.replica == "api-1"
    assert settings.broker.host == "fleet.example" and len(settings.broker.replicas) == 6


def test_the_wheel_ships_every_package_and_the_factory_models(tmp_path: Path) -> None:
    """An installed server, simulator and demo find the shipped models as package data."""
    import zipfile

    from fleet_server.factory_models import DIST

    # Built from a copy of what the wheel is made of: no build/ left in the checkout, and
    # nothing stale from an earlier build in it.
    source, out = tmp_path / "src", tmp_path / "out"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for top in ("agent", "fleet_server", "edgefleet_contract", "edgefleet_common",
                "edgefleet_sim", "edgefleet_demo", "docs"):  # fmt: skip
        shutil.copytree(ROOT / top, source / top, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    code = f"from setuptools import build_meta; print(build_meta.build_wheel({str(out)!r}))"
    built = subprocess.run(
        [sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr[-2000:]
    names = set(zipfile.ZipFile(out / built.stdout.strip().splitlines()[-1]).namelist())
    shipped = sorted(p.name for p in DIST.glob("*.efpkg"))
    assert len(shipped) == 8  # positive control: the source tree has them
    assert {f"fleet_server/factory_models/{name}" for name in shipped} <= names
    tops = {"agent", "fleet_server", "edgefleet_contract", "edgefleet_common"}
    assert {f"{top}/__init__.py" for top in tops | {"edgefleet_sim", "edgefleet_demo"}} <= names
