"""``edge-agent predict`` from the shell: files in three formats, in-process or via the daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fleet_server.broker import ManagedBroker

from .agentproc import DIST, AgentProcess, device_dir
from .harness import Pki, free_port, require, run_text

BIN = Path(sys.executable).parent
MODEL = DIST / "digits-1.0.0-tflite-int8.efpkg"
X = np.load(Path(__file__).with_name("data") / "digits_holdout.npz")["x"][:4].astype(np.float32)


def edge_agent(*args: object, data_dir: Path) -> subprocess.CompletedProcess[str]:
    # A daemon the test did not start (a demo on this host) may hold the default
    # port 8181: point the configured address at a port nothing listens on.
    env = os.environ | {"EDGE_AGENT_LOCAL_API__PORT": str(free_port())}
    return run_text([BIN / "edge-agent", "predict", *args, "--data-dir", data_dir], env=env)


def _files(tmp_path: Path) -> list[Path]:
    np.save(tmp_path / "rows.npy", X)
    (tmp_path / "rows.csv").write_text(
        ",".join(f"f{i}" for i in range(64)) + "\n" + "\n".join(",".join(map(str, r)) for r in X)
    )
    (tmp_path / "rows.json").write_text(json.dumps({"inputs": X.tolist()}))
    return [tmp_path / "rows.npy", tmp_path / "rows.csv", tmp_path / "rows.json"]


def test_predict_in_process_from_each_format(tmp_path: Path) -> None:
    from agent.runtime import Model

    expected = Model.load(MODEL).predict(X).labels
    for path in _files(tmp_path):
        result = edge_agent(path, "--model", MODEL, data_dir=tmp_path / "none")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["source"].startswith("in-process")
        assert [p["label"] for p in doc["predictions"]] == list(expected)


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("1,2,3\n", ".csv", "expects"),
        ("1,2\nx,y\n", ".csv", "not a number"),
        ('{"inputs": [[1, 2,', ".json", "not valid JSON"),
        ("nothing", ".txt", "unknown file type"),
        ("garbage", ".npy", ".npy"),
    ],
)
def test_bad_input_exits_4_with_a_message(
    tmp_path: Path, content: str, suffix: str, message: str
) -> None:
    path = tmp_path / f"rows{suffix}"
    path.write_text(content)
    result = edge_agent(path, "--model", MODEL, data_dir=tmp_path / "none")
    assert result.returncode == 4, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_no_daemon_and_no_model_exits_5(tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", X)
    env_free = edge_agent(tmp_path / "rows.npy", data_dir=tmp_path / "none")
    assert env_free.returncode == 5
    assert "no daemon answers" in env_free.stderr and "--model" in env_free.stderr
    (tmp_path / "bad.efpkg").write_bytes(b"not a zip")
    refused = edge_agent(
        tmp_path / "rows.npy", "--model", tmp_path / "bad.efpkg", data_dir=tmp_path
    )
    assert refused.returncode == 5 and "not a zip" in refused.stderr


def test_predict_goes_through_the_running_daemon(
    pki: Pki, broker: ManagedBroker, tmp_path: Path
) -> None:
    data = device_dir(pki, tmp_path / "dev", "cli-1", broker.port)
    agent = AgentProcess(data, MODEL)
    try:
        address = agent.address
        path = _files(tmp_path)[1]
        result = edge_agent(path, data_dir=data)
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["source"] == address and len(doc["predictions"]) == 4
        assert all(p["id"] for p in doc["predictions"])  # usable for /v1/feedback
        status = run_text([BIN / "edge-agent", "status", "--data-dir", data], timeout=60)
        assert status.returncode == 0, status.stderr
        serving = json.loads(status.stdout)["serving"]
        assert serving["status"] == "ok" and serving["model"] == "digits@1.0.0"
    finally:
        agent.stop()


def test_the_agent_imports_no_server_or_training_stack() -> None:
    """Flower and the web stack cost tens of MB on a board: only a training round may load
    Flower, and the device never loads a web framework."""
    code = (
        "import sys, agent.cli, agent.daemon, agent.localapi, agent.serving, agent.predict;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'flwr', 'fastapi', 'starlette', 'uvicorn', 'fleet_server', 'sklearn', 'onnx'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_systemd_unit_is_valid_and_hardened(tmp_path: Path) -> None:
    import shutil
    from importlib import resources

    text = (resources.files("agent") / "edge-agent.service").read_text()
    for option in (
        "Restart=on-failure",
        "RestartPreventExitStatus=2 3",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/edgefleet",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "KillSignal=SIGTERM",
    ):
        assert option in text, option
    require(shutil.which("systemd-analyze"), "systemd-analyze", "run .ci/setup-system")
    unit = tmp_path / "edge-agent.service"
    unit.write_text(text.replace("/opt/edgefleet/bin/edge-agent", str(BIN / "edge-agent")))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in result.stderr.splitlines() if "edge-agent.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_predict_an_image_file_in_process_with_a_packed_cnn(tmp_path: Path) -> None:
    from PIL import Image

    from fleet_server.modelkit.pack import pack

    from .thirdparty_kit import CNN_IMAGES, cnn_request, digits_truth

    _, package = pack(cnn_request(tmp_path, output=tmp_path / "cnn.efpkg"))
    image = np.load(CNN_IMAGES)[3]
    big = np.kron(image, np.ones((4, 4, 1), dtype=np.uint8))  # 64x64: resized on the way in
    Image.fromarray(big).save(tmp_path / "digit.png")
    result = edge_agent(tmp_path / "digit.png", "--model", package, data_dir=tmp_path / "none")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["predictions"][0]["class_id"] == int(digits_truth()[3])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    result = edge_agent(broken, "--model", package, data_dir=tmp_path / "none")
    assert result.returncode != 0 and "not a readable image file" in result.stderr


def test_predict_a_json_file_that_names_the_inputs(tmp_path: Path) -> None:
    from .thirdparty_kit import two_input_package

    package = two_input_package(tmp_path)
    body = tmp_path / "named.json"
    body.write_text(json.dumps({"inputs": {"a": [[1, 2, 3]], "b": [[1, 1, 1]]}}))
    result = edge_agent(body, "--model", package, data_dir=tmp_path / "none")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["predictions"][0]["values"]["sum"] == [2, 3, 4]
