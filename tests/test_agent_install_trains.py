"""Done when: a device installed as the README says (``pip install 'edgefleet[agent]'``) trains.

A session fixture builds a venv of its own with exactly the user's command — a
non-editable install of a copy of the distribution's files with the ``agent`` extra,
through the machine's pip configuration and cache, as ``make setup`` installs —
and checks that Flower is *not* in it.  That venv's ``edge-agent`` processes then
enroll with the real server, connect to its managed mosquitto (mTLS, ACLs) and
take part in a federated run that must complete.  A round that needs Flower on
the device (local DP) is answered at once by the same devices with the reason,
so the run fails fast with ``missing_extra`` in its failures column instead of
waiting out its round timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet_server.federation.spec import Privacy, RunSpec
from fleet_server.server import FleetServer

from .fl_helpers import fl_spec, learning_agents, write_start_package
from .harness import admin_token, free_port, run_text, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md")


def _install_env() -> dict[str, str]:
    """This environment without what points Python at this checkout, so the fresh
    install's commands import the installed copy."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.fixture(scope="session")
def agent_install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin dir of a fresh venv made with ``pip install '<copy of this tree>[agent]'``."""
    root = tmp_path_factory.mktemp("agent-install")
    src = root / "edgefleet"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project.get("tool", {}).get("setuptools", {})
    data_files = setuptools.get("data-files", {})
    # The packages the distribution ships, as pyproject.toml lists them (a new top-level
    # package is copied without editing this).
    packages = [p.rstrip("*") for p in setuptools["packages"]["find"]["include"]]
    for name in [*SOURCES, *packages, *(f for files in data_files.values() for f in files)]:
        path = ROOT / name
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    venv = root / "venv"
    env = _install_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=120)
    pip = run_text([venv / "bin" / "pip", "install", "-q", f"{src}[agent]"], env=env, timeout=1200)
    assert pip.returncode == 0, f"pip install '{src}[agent]' failed:\n{pip.stderr[-4000:]}"
    python = str(venv / "bin" / "python")
    probe = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u, agent; "
            "print(u.find_spec('flwr') is None, agent.__file__, "
            "[m for m in ('rich', 'yaml', 'pygments') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        check=True,
    )
    no_flower, where, operator_tools = probe.stdout.split(maxsplit=2)
    assert no_flower == "True", "the agent extra must not pull Flower"
    assert operator_tools.strip() == "[]", f"the agent extra pulls {operator_tools.strip()}"
    assert where.startswith(str(venv)), f"agent imported from {where}, not the fresh install"
    yield venv / "bin"


def test_fleetctl_in_a_device_install_names_the_extra(agent_install: Path) -> None:
    """fleetctl ships in the same distribution; on a device it says what to install."""
    env = _install_env()
    done = run_text([agent_install / "fleetctl", "devices", "list"], env=env)
    assert done.returncode == 2, done
    assert "pip install 'edgefleet[cli]'" in done.stderr and "Traceback" not in done.stderr
    # Positive control: the agent of the same install starts (its help needs none of it).
    agent = run_text([agent_install / "edge-agent", "--help"], env=env)
    assert agent.returncode == 0 and "enroll" in agent.stdout, agent


def spec(**kw: object) -> RunSpec:
    return fl_spec("tag:fl=proc", 3, epochs=3, round_timeout_s=600, fields=kw)


def finished(fleet: FleetServer, run_id: str, timeout: float) -> None:
    store = fleet.store
    wait_for(
        lambda: store.get_training_run(run_id).status not in ("pending", "running"),  # type: ignore[attr-defined]
        timeout,
        f"training run {run_id} to end",
    )


def test_agent_extra_install_takes_part_in_a_real_run(
    fleet: FleetServer, tmp_path: Path, agent_install: Path
) -> None:
    write_start_package(fleet.settings.data_dir / "models")
    fleet.training.build_candidates = False
    token = admin_token(fleet.settings.api_url)
    ids = [f"plain-{i}" for i in range(3)]
    with learning_agents(fleet, token, ids, tmp_path, seed=5, bin_dir=agent_install):
        store = fleet.store
        run = fleet.training.start_run(spec(), actor="test")
        finished(fleet, run.id, 300)
        final = store.get_training_run(run.id)  # type: ignore[attr-defined]
        assert final.status == "completed", final.detail
        rounds = store.list_rounds(run.id)  # type: ignore[attr-defined]
        assert [r.round for r in rounds] == [1, 2, 3]
        assert all(sorted(r.participants) == ids and not r.failures for r in rounds), rounds
        assert all(r.eligibility == {"eligible": 3} for r in rounds)
        assert rounds[-1].accuracy > rounds[0].accuracy * 0.9 and rounds[-1].accuracy > 0.5

        # Local DP needs Flower's LocalDpMod on the device: these devices say so at once.
        private = spec(rounds=1, privacy=Privacy(local_dp_epsilon=5.0))
        run = fleet.training.start_run(private, actor="test")
        finished(fleet, run.id, 120)  # far below the 600 s round timeout
        final = store.get_training_run(run.id)  # type: ignore[attr-defined]
        assert final.status == "failed"
        assert "missing_extra 3" in final.detail and "edgefleet[agent,fl]" in final.detail
        (failed,) = store.list_rounds(run.id)  # type: ignore[attr-defined]
        assert failed.failures == {"missing_extra": 3} and sorted(failed.failed) == ids
    for device_id in ids:
        log = (tmp_path / f"{device_id}.log").read_text()
        assert "ModuleNotFoundError" not in log and "Traceback" not in log, log[-3000:]


def _edge_predict(
    bin_dir: Path, file: Path, package: Path, data_dir: Path
) -> subprocess.CompletedProcess[str]:
    """``edge-agent predict FILE --model PACKAGE`` of the fresh install."""
    env = _install_env() | {"EDGE_AGENT_LOCAL_API__PORT": str(free_port())}  # no daemon there
    command = ["predict", file, "--model", package, "--data-dir", data_dir]
    return run_text([bin_dir / "edge-agent", *command], env=env, timeout=300)


def _device_predict(
    bin_dir: Path, file: Path, package: Path, data_dir: Path
) -> list[dict[str, Any]]:
    """The fresh install's in-process answers to ``edge-agent predict``."""
    done = _edge_predict(bin_dir, file, package, data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert doc["source"].startswith("in-process"), doc
    return list(doc["predictions"])


def test_a_device_install_serves_models_other_tools_wrote(
    tmp_path: Path, agent_install: Path
) -> None:
    """The torch ResNet (packed to int8) and the skl2onnx IsolationForest, packed by
    ``fleetctl models pack`` here, are verified, self-tested and served by the fresh
    ``[agent]`` install with the answers the development install gives.  Decoding image
    files needs Pillow, which the agent extras leave out: the pixels go as an array, and
    an image file is refused with the package to install."""
    from PIL import Image

    from agent.serving import ModelService
    from fleet_server.modelkit.pack import pack

    from .thirdparty_kit import iforest_request, resnet_images, resnet_request

    _, resnet = pack(resnet_request(tmp_path, quantize="int8", output=tmp_path / "r.efpkg"))
    _, iforest = pack(iforest_request(tmp_path, output=tmp_path / "a.efpkg"))
    image = resnet_images(1)[0].astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "digit.png")
    # Pump readings (temperature, vibration, current, pressure): normal ones and a broken one.
    rows = np.array(
        [[55.0, 2.5, 4.0, 3.5], [54.0, 2.4, 4.1, 3.4], [120.0, 25.0, 30.0, 0.1]], np.float32
    )
    np.save(tmp_path / "rows.npy", rows)

    here = ModelService(threads=1)
    here.replace(resnet)
    want = here.infer(image)[0].results
    np.save(tmp_path / "digit.npy", image)
    got = _device_predict(agent_install, tmp_path / "digit.npy", resnet, tmp_path / "d1")
    assert [a["class_id"] for a in got] == [a["class_id"] for a in want]
    assert got[0]["label"] == f"digit-{want[0]['class_id']}"
    refused = _edge_predict(agent_install, tmp_path / "digit.png", resnet, tmp_path / "d1")
    assert refused.returncode == 4 and "Traceback" not in refused.stderr, refused
    assert "pip install 'edgefleet[images]'" in refused.stderr, refused.stderr

    here.replace(iforest)
    want = here.infer(rows)[0].results
    got = _device_predict(agent_install, tmp_path / "rows.npy", iforest, tmp_path / "d2")
    assert [a["anomaly"] for a in want] == [False, False, True]
    assert len(got) == 3
    for device, dev in zip(got, want, strict=True):
        assert device.keys() == dev.keys()
        assert np.isclose(device["score"], dev["score"], rtol=1e-5), (device, dev)
        assert device["anomaly"] == dev["anomaly"]
