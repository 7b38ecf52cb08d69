"""Idle memory of the real ``edge-agent run`` process (model loaded, telemetry every second
through the real broker, local API listening, after 300 predictions through that API),
next to a bare process that only imports the runtime and loads the same model file, in
the same run.  Resident set size from ``/proc/PID/status`` after 5 s of idling.
Target: the agent at most 100 MB.  The daemon pins glibc's mmap threshold and caps its
malloc arenas at start (agent/allocator.py); without that the ONNX row read ~99 MiB.
The difference to the bare process is mostly the Python side: pydantic and the wire
schemas, settings, MQTT, SQLite, the HTTP server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from agent import localclient
from tests.harness import wait_for

from ._device import device_dir, rss_bytes, spool_depth, start_agent
from ._lab import Lab

DIST = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models"
HOLDOUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "digits_holdout.npz"
IDLE_S = 5.0
MiB = 1024 * 1024

BARE = """
import json, sys, time, zipfile
import numpy as np
runtime, path = sys.argv[1:3]
with zipfile.ZipFile(path) as z:
    manifest = json.loads(z.read("manifest.json"))
    model = z.read(manifest["model_file"])
x = np.zeros((1, 64), dtype=np.float32)
if runtime == "onnx":
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    session.run(None, {session.get_inputs()[0].name: x})
else:
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=model, num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
print("ready", flush=True)
time.sleep(3600)
"""


def bare_rss(runtime: str, package: Path) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE, runtime, str(package)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(IDLE_S)
        return rss_bytes(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def agent_rss(lab: Lab, device_id: str, package: Path) -> tuple[int, str]:
    data = device_dir(lab, device_id)
    proc = start_agent(data, package)
    try:
        address_file = data / "local-api.addr"
        wait_for(address_file.exists, 60, "the agent's local API")
        where = address_file.read_text().strip()
        rows = np.load(HOLDOUT)["x"].astype(np.float32)
        for start in range(0, 300, 10):
            status, _ = localclient.predict(where, rows[start : start + 10])
            assert status == 200
        wait_for(lambda: spool_depth(data) == 0, 60, "telemetry delivered")
        time.sleep(IDLE_S)
        rss = rss_bytes(proc.pid)
        status, health = localclient.request(where, "GET", "/v1/health")
        modules = subprocess.run(
            ["grep", "-c", "flwr\\|fastapi", f"/proc/{proc.pid}/maps"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert status == 200, health
        return rss, f"health {health['status']}; flwr/fastapi mapped: {modules or '0'}"
    finally:
        proc.terminate()
        proc.wait(30)


def run() -> list[dict[str, object]]:
    lab = Lab()
    rows: list[dict[str, object]] = []
    try:
        for runtime in ("onnx", "tflite"):
            package = DIST / f"digits-cnn-1.0.0-{runtime}-int8.efpkg"
            bare = bare_rss(runtime, package)
            agent, note = agent_rss(lab, f"rss-{runtime}", package)
            rows.append(
                {
                    "model": package.name,
                    "bare runtime + model": f"{bare / MiB:.1f} MiB",
                    "edge-agent run": f"{agent / MiB:.1f} MiB ({agent / 1e6:.1f} MB)",
                    "ratio": f"{agent / bare:.2f}x",
                    "agent - bare": f"{(agent - bare) / MiB:+.1f} MiB",
                    "target": "met (<= 100 MB)" if agent <= 100e6 else "MISSED (> 100 MB)",
                    "note": note,
                }
            )
    finally:
        lab.close()
    return rows
