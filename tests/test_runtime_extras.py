"""Install by runtime: an agent with only one runtime serves that runtime's packages and
refuses the other's with the extra to install, while its current model keeps serving.

Each scenario runs in a fresh interpreter where the missing runtime cannot be imported:
``sys.modules[name] = None`` is what Python itself consults first, so ``import`` fails
and ``importlib.util.find_spec`` reports the module absent, exactly as for a package that
is not installed, without touching the shared environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "fleet_server" / "factory_models"
BLOCKED = {"onnx": ["onnxruntime"], "tflite": ["ai_edge_litert", "tflite_runtime"]}

SCENARIO = """
import json, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
from pathlib import Path
import numpy as np
from agent.runtime import available_runtimes
from agent.serving import ModelService
from agent.updates.machine import check_target
from edgefleet_contract.errors import ModelError, UpdateError
from edgefleet_contract.messages import TargetRef

kept, refused = Path(sys.argv[2]), Path(sys.argv[3])
service = ModelService(threads=1)
service.replace(kept)
result = {"runtimes": available_runtimes()}
try:
    service.replace(refused)
except ModelError as exc:
    result["refused"] = f"{type(exc).__name__}: {exc}"
result["serving"] = service.model.manifest.flavor
result["predicts"] = service.predict(np.zeros((1, 64), np.float32)).labels[0]
target = "models/digits/1.0.0/" + refused.name
ref = TargetRef(kind="model", name="digits", version="1.0.0", target=target)
custom = {"kind": "model", "name": "digits", "version": "1.0.0", "runtime": sys.argv[4]}
try:
    check_target(ref, custom, hardware="rpi4", runtimes=available_runtimes())
except UpdateError as exc:
    result["ota"] = str(exc)
print(json.dumps(result))
"""


@pytest.mark.parametrize(("missing", "present"), [("onnx", "tflite"), ("tflite", "onnx")])
def test_an_agent_without_a_runtime_names_its_extra_and_keeps_serving(
    missing: str, present: str
) -> None:
    kept = DIST / f"digits-1.0.0-{present}-int8.efpkg"
    refused = DIST / f"digits-1.0.0-{missing}-int8.efpkg"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            SCENARIO,
            ",".join(BLOCKED[missing]),
            str(kept),
            str(refused),
            missing,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    extra = f"pip install 'edgefleet[agent-{missing}]'"
    assert result["runtimes"] == [present]
    assert result["refused"].startswith("RuntimeUnavailable: digits 1.0.0")
    assert extra in result["refused"]
    assert result["serving"] == f"{present}-int8" and result["predicts"] in [
        str(d) for d in range(10)
    ]
    assert "not downloading it" in result["ota"] and extra in result["ota"]


def test_each_runtime_has_its_own_extra_without_training_or_server_deps() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def names(extra: str) -> set[str]:
        out = set()
        for requirement in extras[extra]:
            name = requirement.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip()
            if name.startswith("edgefleet["):
                for inner in name[len("edgefleet[") : -1].split(","):
                    out |= names(inner)
            else:
                out.add(name)
        return out

    onnx, tflite, both = names("agent-onnx"), names("agent-tflite"), names("agent")
    assert "onnxruntime" in onnx and "ai-edge-litert" not in onnx
    assert "ai-edge-litert" in tflite and "onnxruntime" not in tflite
    assert both == onnx | tflite  # `agent` stays what it was: both runtimes
    for extra in ("agent", "agent-onnx", "agent-tflite", "agent-base"):
        assert not names(extra) & {"flwr", "onnx", "fastapi", "scikit-learn"}, extra


OTA = """
import json, sys
for name in ("ai_edge_litert", "tflite_runtime"):
    sys.modules[name] = None
from pathlib import Path
from edgefleet_contract.package import Manifest, pack_package, read_package
from tests.ota_device_kit import make_device, model_custom, model_ref, model_target
from tests.tuf_sim import RepoServer, TufRepo

tflite = read_package(Path(sys.argv[2]))
manifest = Manifest.model_validate({**tflite.manifest.model_dump(), "version": "1.1.0"})
server = RepoServer(TufRepo())
try:
    device = make_device(Path(sys.argv[1]), server)
    custom = {**model_custom("1.1.0"), "runtime": "tflite", "flavor": "tflite-int8"}
    server.repo.add_target(model_target("1.1.0"), pack_package(manifest, tflite.members), custom)
    server.repo.publish()
    final = device.updater.run(model_ref("1.1.0"), desired_version=2)
    downloads = [p for p, _ in server.requests if p.startswith("/tuf/targets/")]
    print(json.dumps({"phase": final.phase, "error": final.error, "serving": device.serving,
                      "downloads": len(downloads),
                      "predicts": device.service.predict([[0.0] * 64]).labels[0]}))
finally:
    server.close()
"""


def test_a_rollout_for_a_missing_runtime_fails_before_download_and_keeps_serving(
    tmp_path: Path,
) -> None:
    """The real updater against a real signed repository, on a device without TFLite."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            OTA,
            str(tmp_path / "dev"),
            str(DIST / "digits-1.0.0-tflite-int8.efpkg"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["phase"] == "failed" and result["serving"] == "1.0.0"
    assert "needs the 'tflite' runtime" in result["error"]
    assert "pip install 'edgefleet[agent-tflite]' and restart the agent" in result["error"]
    assert result["downloads"] == 0 and result["predicts"] in [str(d) for d in range(10)]
