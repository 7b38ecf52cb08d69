"""The device's native federated path: numpy-only training, refusals with reasons, no Flower.

The worker is fed whole frames exactly as they arrive from ``devices/{id}/fl/in``;
the Flower-free checks run in a child interpreter where ``import flwr`` fails, as
on a device installed with the agent extra only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agent.learning.worker import LearningWorker
from edgefleet_contract import flframes, flwire
from edgefleet_contract.package import read_package
from fleet_server.modelkit.digits import split

from .agentproc import DIST

PACKAGE = DIST / "digits-1.0.0-onnx-float32.efpkg"


def instruction(kind: str = "train", model: str = "digits", **config: object) -> bytes:
    package = read_package(PACKAGE)
    assert package.manifest.trainable is not None
    envelope = flwire.FlEnvelope(
        kind=kind,  # type: ignore[arg-type]
        message_id="m1",
        config={
            "trainable": package.manifest.trainable.model_dump_json(),
            "preprocessing": package.manifest.preprocessing.model_dump_json(),
            "model": model,
            "local-epochs": 1,
            "lr": 0.1,
            "batch-size": 16,
            "server-round": 1,
            **config,  # type: ignore[dict-item]
        },
    )
    weights = {k: v.astype(np.float64) for k, v in package.weights().items()}
    return flwire.encode(envelope, weights)


def answer(worker: LearningWorker, payload: bytes) -> tuple[flwire.FlEnvelope, flwire.Arrays]:
    sent: list[bytes] = []
    worker._send = lambda frame: sent.append(frame) or True  # type: ignore[method-assign]
    for frame in flframes.split(payload, 4096):
        worker.on_frame(frame)
    deadline = time.monotonic() + 60
    reassembler = flframes.Reassembler()
    while time.monotonic() < deadline:
        for frame in list(sent):
            sent.remove(frame)
            data = reassembler.feed("device", frame, 0.0)
            if data is not None:
                envelope, arrays, _ = flwire.decode(data)
                return envelope, arrays
        time.sleep(0.01)
    raise AssertionError("the worker never answered")


def digits_rows(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    data = split()
    return data.x_train[:n].astype(np.float32), data.y_train[:n].astype(np.int64)


def test_native_training_keeps_dtypes_and_lowers_loss() -> None:
    rows, labels = digits_rows()
    worker = LearningWorker(lambda f: True, lambda width: (rows, labels), model=lambda: "digits")
    try:
        reply, arrays = answer(worker, instruction(**{"local-epochs": 3}))
        assert reply.kind == "reply" and reply.reply_to == "m1"
        assert reply.metrics["num-examples"] == len(labels)
        start = read_package(PACKAGE).weights()
        assert set(arrays) == set(start)
        assert all(a.dtype == np.float64 for a in arrays.values())
        assert any(not np.allclose(arrays[k], start[k]) for k in start)
        evaluated, _ = answer(worker, instruction("evaluate"))
        assert evaluated.kind == "reply" and 0.0 <= evaluated.metrics["accuracy"] <= 1.0
        assert worker.counts["handled"] == 2
    finally:
        worker.stop()


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        ({"rows": 0}, flwire.NO_SAMPLES),
        ({"serving": "other-model"}, flwire.WRONG_MODEL),
        ({"skip": "on battery"}, flwire.NOT_ELIGIBLE),
    ],
)
def test_a_device_that_cannot_train_says_why_at_once(setup: dict[str, object], code: str) -> None:
    rows, labels = digits_rows(int(setup.get("rows", 50)))  # type: ignore[call-overload]
    serving = setup.get("serving", "digits")
    skip = setup.get("skip")
    worker = LearningWorker(
        lambda f: True,
        lambda width: (rows, labels),
        model=lambda: str(serving),
        skip=(lambda: str(skip)) if skip else None,
    )
    try:
        reply, arrays = answer(worker, instruction())
        assert reply.kind == "error" and arrays == {}
        assert reply.error is not None and reply.error.code == code, reply.error
        assert reply.error.detail
    finally:
        worker.stop()


def test_a_convolutional_model_is_refused_as_unsupported() -> None:
    package = read_package(PACKAGE)
    assert package.manifest.trainable is not None
    layers = json.loads(package.manifest.trainable.model_dump_json())
    layers["layers"][0]["kind"] = "conv2d"
    rows, labels = digits_rows(20)
    worker = LearningWorker(lambda f: True, lambda width: (rows, labels))
    try:
        reply, _ = answer(worker, instruction(trainable=json.dumps(layers)))
        assert reply.error is not None and reply.error.code in (
            flwire.UNSUPPORTED_MODEL,
            flwire.BAD_INSTRUCTION,
        )
    finally:
        worker.stop()


_NO_FLOWER = r"""
import sys, json, time
sys.modules["flwr"] = None  # as on a device installed with the agent extra only
from pathlib import Path
import numpy as np
from agent.learning.worker import LearningWorker
from edgefleet_contract import flframes, flwire

data = Path(sys.argv[1])
rows, labels = np.load(data / "rows.npy"), np.load(data / "labels.npy")
sent = []
worker = LearningWorker(lambda f: sent.append(f) or True, lambda width: (rows, labels))
out = {}
for name in ("train", "flower"):
    sent.clear()
    for frame in flframes.split((data / f"{name}.bin").read_bytes(), 4096):
        worker.on_frame(frame)
    r = flframes.Reassembler()
    got = None
    while got is None:
        while not sent:
            time.sleep(0.01)
        got = r.feed("d", sent.pop(0), 0.0)
    envelope, arrays, _ = flwire.decode(got)
    out[name] = {"kind": envelope.kind, "code": envelope.error.code if envelope.error else None,
                 "detail": envelope.error.detail if envelope.error else "", "arrays": len(arrays)}
out["flwr_loaded"] = any(m == "flwr" or m.startswith("flwr.") for m in sys.modules
                         if sys.modules[m] is not None)
print(json.dumps(out))
"""


def test_without_flower_a_device_trains_and_refuses_flower_only_rounds(tmp_path: Path) -> None:
    rows, labels = digits_rows(100)
    np.save(tmp_path / "rows.npy", rows)
    np.save(tmp_path / "labels.npy", labels)
    (tmp_path / "train.bin").write_bytes(instruction())
    flower = flwire.FlEnvelope(kind="flower", message_id="m2")
    (tmp_path / "flower.bin").write_bytes(flwire.encode(flower, body=b"\x0a\x00"))
    done = subprocess.run(
        [sys.executable, "-c", _NO_FLOWER, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["train"] == {"kind": "reply", "code": None, "detail": "", "arrays": 4}
    assert out["flower"]["code"] == flwire.MISSING_EXTRA
    assert "edgefleet[agent,fl]" in out["flower"]["detail"]
    assert out["flwr_loaded"] is False


def test_malformed_payloads_are_refused_and_counted() -> None:
    with pytest.raises(Exception, match="EFW1"):
        flwire.decode(b"garbage")
    good = instruction()
    with pytest.raises(Exception, match="body"):
        flwire.decode(good[:-8])
    worker = LearningWorker(lambda f: True, lambda width: digits_rows(10))
    try:
        worker.on_frame(flframes.split(b"EFW1\x00\x00\x00\x02{}", 4096)[0])
        deadline = time.monotonic() + 30
        while worker.counts["undecodable"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.counts["undecodable"] == 1
    finally:
        worker.stop()
