"""On-device training, the device's veto, eligibility rules and run specs (no broker)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from agent.learning.trainer import LocalConfig, Mlp, train
from agent.learning.worker import LearningWorker, skip_reason
from edgefleet_contract.errors import ModelError
from edgefleet_contract.messages import LearningStats, SystemStats, Telemetry
from edgefleet_contract.package import LayerSpec, ParamSpec, Trainable
from fleet_server.federation.eligibility import reason_excluded
from fleet_server.federation.spec import Eligibility, RunSpec
from fleet_server.store.base import Device


def mlp() -> tuple[Mlp, dict[str, np.ndarray]]:
    trainable = Trainable(
        input_shape=[4],
        layers=[
            LayerSpec(kind="dense", weight="w0", bias="b0", activation="relu"),
            LayerSpec(kind="dense", weight="w1", bias="b1", activation="softmax"),
        ],
        params=[
            ParamSpec(name="w0", shape=[4, 5]),
            ParamSpec(name="b0", shape=[5]),
            ParamSpec(name="w1", shape=[5, 3]),
            ParamSpec(name="b1", shape=[3]),
        ],
    )
    rng = np.random.default_rng(0)
    shapes = {"w0": (4, 5), "b0": (5,), "w1": (5, 3), "b1": (3,)}
    return Mlp(trainable), {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def test_gradients_match_finite_differences() -> None:
    net, w = mlp()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=8)
    grads, _ = net.gradients(w, x, y)
    for name in w:
        for idx in [(0,) * w[name].ndim, tuple(s - 1 for s in w[name].shape)]:
            w64 = {k: v.astype(np.float64) for k, v in w.items()}
            eps = 1e-4
            w64[name][idx] += eps
            up = net.gradients({k: v.astype(np.float32) for k, v in w64.items()}, x, y)[1]
            w64[name][idx] -= 2 * eps
            down = net.gradients({k: v.astype(np.float32) for k, v in w64.items()}, x, y)[1]
            assert abs((up - down) / (2 * eps) - grads[name][idx]) < 2e-2


def test_training_lowers_loss_and_fedprox_stays_closer() -> None:
    net, w = mlp()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    before = net.gradients(w, x, y)[1]
    plain = train(net, w, x, y, LocalConfig(epochs=20, lr=0.2))
    prox = train(net, w, x, y, LocalConfig(epochs=20, lr=0.2, proximal_mu=5.0))
    assert plain.loss < before and plain.examples == 64

    def dist(out: dict[str, np.ndarray]) -> float:
        return sum(float(np.square(out[k] - w[k]).sum()) for k in w)

    assert dist(prox.weights) < dist(plain.weights)
    with pytest.raises(ModelError, match="no labelled samples"):
        train(net, w, x[:0], y[:0], LocalConfig())
    with pytest.raises(ModelError, match="shape"):
        train(net, {**w, "w0": np.zeros((2, 2), np.float32)}, x, y, LocalConfig())


def test_convolutional_trainable_part_is_refused() -> None:
    trainable = Trainable(
        input_shape=[8, 8, 1],
        layers=[
            LayerSpec(kind="conv2d", weight="c", bias="cb", activation="relu"),
            LayerSpec(kind="flatten"),
            LayerSpec(kind="dense", weight="w", bias="b", activation="softmax"),
        ],
        params=[
            ParamSpec(name="c", shape=[3, 3, 1, 2]),
            ParamSpec(name="cb", shape=[2]),
            ParamSpec(name="w", shape=[128, 10]),
            ParamSpec(name="b", shape=[10]),
        ],
    )
    with pytest.raises(ModelError, match="dense layers only"):
        Mlp(trainable)


def system(power: str) -> SystemStats:
    return SystemStats(
        cpu_percent=1,
        mem_used_bytes=1,
        mem_total_bytes=2,
        rss_bytes=1,
        disk_used_bytes=1,
        disk_total_bytes=2,
        uptime_s=1,
        power=power,  # type: ignore[arg-type]
    )


def test_device_on_battery_answers_with_a_skip_error_at_once() -> None:
    from flwr.app import ConfigRecord, Message, RecordDict

    from edgefleet_common import flower_compat

    assert skip_reason("battery") == "on battery"
    assert skip_reason("battery", allow_battery=True) is None
    assert skip_reason("ac") is None and skip_reason("unknown") is None
    worker = LearningWorker(
        lambda f: True,
        lambda width: (np.zeros((0, width)), np.zeros(0, np.int64)),
        skip=lambda: skip_reason("battery"),
    )
    flower_compat.set_task_identity(1)
    message = Message(RecordDict({"config": ConfigRecord({"x": 1})}), 5, "train")
    reply = worker.answer(message)
    assert reply.has_error() and "battery" in reply.error.reason
    assert worker.counts["skipped"] == 1


def test_idle_agent_does_not_import_flower() -> None:
    code = "import sys, agent.daemon, agent.learning.worker; print('flwr' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def device(**kw: object) -> Device:
    base: dict[str, object] = {
        "id": "d1",
        "name": "d1",
        "tags": {},
        "groups": (),
        "state": "enrolled",
        "created_at": 0.0,
        "online": True,
        "model_name": "digits",
        "model_version": "1.0.0",
    }
    base.update(kw)
    return Device(**base)  # type: ignore[arg-type]


def telemetry(
    *, samples: int = 50, new: int = 50, busy: bool = False, power: str = "ac"
) -> Telemetry:
    return Telemetry(
        device_id="d1",
        batch_id="b1",
        seq=1,
        ts=time.time(),
        window_s=1,
        learning=LearningStats(labelled_samples=samples, new_samples=new, busy=busy),
        system=system(power),
    )


def test_eligibility_rules() -> None:
    rules = Eligibility(min_new_samples=10, min_samples=20)
    assert reason_excluded(device(), telemetry(), rules, "digits") is None
    assert reason_excluded(device(online=False), telemetry(), rules, "digits") == "offline"
    assert reason_excluded(device(), None, rules, "digits") == "no_learning_telemetry"
    assert reason_excluded(device(), telemetry(samples=5), rules, "digits") == "too_few_samples"
    assert reason_excluded(device(), telemetry(new=3), rules, "digits") == "too_few_new_samples"
    assert reason_excluded(device(), telemetry(busy=True), rules, "digits") == "busy"
    assert reason_excluded(device(), telemetry(power="battery"), rules, "digits") == "on_battery"
    battery_ok = Eligibility(allow_battery=True)
    assert reason_excluded(device(), telemetry(power="battery"), battery_ok, "digits") is None
    pinned = Eligibility(model_version="1.0.0")
    assert reason_excluded(device(), telemetry(), pinned, "digits") is None
    assert reason_excluded(device(model_version="0.9.0"), telemetry(), pinned, "digits") == (
        "model_version"
    )


def test_run_spec_refuses_incoherent_combinations() -> None:
    RunSpec(secagg=True, min_clients=3)
    with pytest.raises(ValidationError, match="secagg"):
        RunSpec(secagg=True, strategy="krum", min_clients=5)
    with pytest.raises(ValidationError, match="min_clients"):
        RunSpec(secagg=True, min_clients=2)
    with pytest.raises(ValidationError, match="krum"):
        RunSpec(strategy="krum", krum_malicious=2, min_clients=5)
    with pytest.raises(ValidationError):
        RunSpec(model="Bad Name")


def test_candidate_versions_never_repeat(tmp_path: Path) -> None:
    from fleet_server.federation.candidate import built_versions, next_version

    assert next_version("1.0.0") == "1.1.0"
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "digits-1.1.0-onnx-float32.efpkg").write_bytes(b"x")
    (tmp_path / "run1" / "digits-cnn-1.4.0-onnx-float32.efpkg").write_bytes(b"x")
    taken = built_versions(tmp_path, "digits")
    assert taken == ["1.1.0"]
    assert next_version("1.0.0", taken) == "1.2.0"
    assert next_version("2.3.1", taken) == "2.4.0"
