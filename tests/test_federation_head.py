"""A federated run over a user's own model: the torch CNN's dense head, fine-tuned by devices.

Real broker, real fleet server, the agent's learning worker and its backbone
runner: each device keeps raw 16x16 RGB digit images, runs them through the
package's frozen backbone in ONNX Runtime and trains the head in numpy; the
server aggregates, scores on the held-out set the operator left for the model,
and hands over the same torch graph with the new head, in float and int8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from agent.learning.backbone import Backbone
from agent.learning.worker import LearningWorker
from edgefleet_contract.errors import FederationError
from edgefleet_contract.package import Lineage, ModelPackage, read_package
from fleet_server.config import ServerSettings
from fleet_server.federation.spec import LocalTraining, RunSpec
from fleet_server.modelkit import quantize
from fleet_server.modelkit.headpackage import head_packages
from fleet_server.server import FleetServer, initialize
from models.thirdparty import digits_images

from .fl_helpers import learning_agents, make_device
from .harness import ADMIN_PASSWORD, admin_token, server_settings, wait_for
from .thirdparty_kit import CNN, cnn_head_package

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
MODEL = "digits-torch"
HEAD = ("9.weight", "9.bias", "11.weight", "11.bias")
"""The initializers of the torch CNN's two Linear layers (the head)."""


def _start_package(folder: Path, images: np.ndarray) -> ModelPackage:
    """The CNN packed with its head, the last layer scrambled so the run has work to do."""
    folder.mkdir(parents=True, exist_ok=True)
    parent = read_package(cnn_head_package(folder))
    weights = dict(parent.weights())
    rng = np.random.default_rng(5)
    weights["head1_w"] = rng.normal(0, 0.05, weights["head1_w"].shape).astype(np.float32)
    blob = head_packages(
        parent,
        weights,
        version="1.0.0",
        lineage=Lineage(source="pack"),
        calibration_raw=images,
        min_agreement=0.0,  # only the float flavour is kept; the scrambled head is poor
    )["onnx-float32"]
    path = folder / f"{MODEL}-1.0.0-onnx-float32.efpkg"
    path.write_bytes(blob)
    return read_package(path)


@pytest.fixture
def settings(tmp_path: Path) -> ServerSettings:
    s = server_settings(tmp_path / "fleet")
    assert isinstance(s, ServerSettings)
    initialize(s, admin_password=ADMIN_PASSWORD)
    return s


def _spec(target: str, clients: int) -> RunSpec:
    """Two FedAvg rounds over every device of ``target``, three local epochs each."""
    return RunSpec(
        model=MODEL,
        target=target,
        strategy="fedavg",
        rounds=2,
        min_clients=clients,
        round_timeout_s=180,
        local=LocalTraining(epochs=3, lr=0.1, batch_size=16),
    )


def _finished(server: FleetServer, run_id: str) -> Any:
    """The run's record once it is no longer pending or running."""

    def done() -> bool:
        status = server.store.get_training_run(run_id).status  # type: ignore[attr-defined]
        return status not in ("pending", "running")

    wait_for(done, 300, "run finished")
    return server.store.get_training_run(run_id)  # type: ignore[attr-defined]


def _initializers(model: bytes) -> dict[str, np.ndarray]:
    graph = onnx.load_from_string(model).graph
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def test_devices_fine_tune_the_head_of_a_torch_cnn_into_a_candidate_of_the_same_graph(
    server: FleetServer, tmp_path: Path
) -> None:
    images, labels = digits_images()
    heldout = slice(1500, None)  # the images the CNN was never trained on
    data_dir = server.settings.data_dir
    start = _start_package(data_dir / "models", images[heldout].astype(np.float32))
    (data_dir / "heldout").mkdir()
    np.savez(data_dir / "heldout" / f"{MODEL}.npz", x=images[heldout], y=labels[heldout])
    backbone = Backbone(start)

    class HeadWorker(LearningWorker):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, backbone=lambda: backbone, **kw)  # type: ignore[arg-type]

    handed: list[tuple[Path, dict[str, object]]] = []
    server.training.on_candidate = lambda path, info: handed.append((path, info))
    flat = images.reshape(len(images), -1).astype(np.float32)
    fleet = [
        make_device(
            server,
            tmp_path / "devs",
            f"head-{i}",
            flat[i * 300 : (i + 1) * 300],
            labels[i * 300 : (i + 1) * 300],
            worker_cls=HeadWorker,
        )
        for i in range(3)
    ]
    try:
        wait_for(lambda: all(d.link.connected.is_set() for d in fleet), what="devices connected")
        wait_for(
            lambda: all(server.store.get_device(d.link.device_id).online for d in fleet),
            what="devices online",
        )
        secure = _spec("tag:fl=yes", 3).model_copy(update={"secagg": True})
        with pytest.raises(FederationError, match="without secagg"):
            server.training.start_run(secure, actor="test")
        run = server.training.start_run(_spec("tag:fl=yes", 3), actor="test")
        final = _finished(server, run.id)
        assert final.status == "completed", final
        result = final.result
        assert result["beats_parent"] is True and result["handed_over"] is True, result
        assert result["accuracy"] > 0.9 > 0.5 > result["baseline_accuracy"], result
        assert all(d.worker.counts["handled"] >= 2 for d in fleet)
        assert sorted(p.name for p, _ in handed) == [
            f"{MODEL}-1.1.0-onnx-float32.efpkg",
            f"{MODEL}-1.1.0-onnx-int8.efpkg",
        ]
        candidate = read_package(handed[0][0])
        assert candidate.manifest.trainable == start.manifest.trainable
        # The same user graph: every initializer but the head's is the parent's, byte for byte.
        old = _initializers(start.members["model.onnx"])
        new = _initializers(candidate.members["model.onnx"])
        assert sorted(old) == sorted(new) and sorted(old) == sorted(_initializers(CNN.read_bytes()))
        for name in old:
            same = np.array_equal(old[name], new[name])
            assert same != (name in HEAD), name
        int8 = read_package(handed[1][0])
        assert int8.manifest.quantization.dtype == "int8"
        assert quantize.float_weight_ops(int8.members["model.onnx"]) == []
        # The registry takes both as signed targets (its own checks included).
        for path, info in handed:
            artifact = server.artifacts.add_model(path, lineage=info, actor=f"federation:{run.id}")
            assert (artifact.name, artifact.version) == (MODEL, "1.1.0")
    finally:
        for d in fleet:
            d.stop()


def test_real_agents_serving_the_cnn_train_its_head_through_their_own_backbone(
    fleet: FleetServer, tmp_path: Path
) -> None:
    """``edge-agent run`` processes that boot serving the package: each opens the backbone
    of the model it serves, so nothing in the test hands them one."""
    images, labels = digits_images()
    data_dir = fleet.settings.data_dir
    start = _start_package(data_dir / "models", images[1500:].astype(np.float32))
    (data_dir / "heldout").mkdir()
    np.savez(data_dir / "heldout" / f"{MODEL}.npz", x=images[1500:], y=labels[1500:])
    boot = tmp_path / "boot.efpkg"
    boot.write_bytes((data_dir / "models" / f"{MODEL}-1.0.0-onnx-float32.efpkg").read_bytes())
    ids = ["cnn-0", "cnn-1"]
    env = {"EDGE_AGENT_MODEL": str(boot), "EDGE_AGENT_LOCAL_API__PORT": "0"}
    flat = images[:1000].reshape(1000, -1).astype(np.float32)
    token = admin_token(fleet.settings.api_url)
    with learning_agents(
        fleet, token, ids, tmp_path, seed=2, env=env, dataset=(flat, labels[:1000])
    ):
        run = fleet.training.start_run(_spec("tag:fl=proc", 2), actor="test")
        final = _finished(fleet, run.id)
        assert final.status == "completed", (final.detail, final.result)
        result = final.result
        assert result["accuracy"] > 0.9 > 0.5 > result["baseline_accuracy"], result
        assert sorted(result["participants"]) == ids
        assert result["handed_over"] is True  # into the server's registry, as signed targets
        candidate = read_package(Path(result["files"][0]))
        assert candidate.manifest.lineage.parent == f"{MODEL}@1.0.0"
        assert candidate.manifest.trainable == start.manifest.trainable
