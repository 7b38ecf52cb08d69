"""A user's own CNN with a trainable head: the packer's split, and the device training the head.

The model is the committed torch CNN (tests/data/digits_cnn_torch.onnx): packed
with ``--embedding``, its graph up to the flattened conv features becomes the
frozen backbone the device runs in ONNX Runtime, and its two Linear layers the
dense head the numpy trainer fine-tunes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from agent.learning import native
from agent.learning.backbone import Backbone
from agent.runtime import Model
from agent.samples import SampleStore
from agent.serving import ModelService
from edgefleet_contract import flwire
from edgefleet_contract.errors import PackageError
from edgefleet_contract.package import BACKBONE_NAME, Manifest, read_package
from fleet_server.modelkit.headsplit import split_head, write_head

from .fleetctl_kit import fleetctl
from .thirdparty_kit import (
    CNN,
    CNN_EMBEDDING,
    CNN_IMAGES,
    cnn_head_package,
    cnn_request,
    digits_truth,
    pack_args,
)

# Every test runs fleetctl against its own config file, never the developer's.
pytestmark = pytest.mark.usefixtures("fleetctl_config")


def _pack_args(tmp_path: Path, embedding: str, out: Path) -> list[str]:
    return ["models", "pack", *pack_args(cnn_request(tmp_path, embedding=embedding, output=out))]


def test_cli_splits_the_cnn_at_its_embedding_into_backbone_and_dense_head(
    tmp_path: Path,
) -> None:
    out = tmp_path / "cnn.efpkg"
    code, stdout, err = fleetctl(_pack_args(tmp_path, CNN_EMBEDDING, out))
    assert code == 0, err
    assert f"trainable head after {CNN_EMBEDDING}: dense 512->64 relu, 64->10 softmax" in stdout
    package = read_package(out)
    trainable = package.manifest.trainable
    assert trainable is not None and trainable.embedding == CNN_EMBEDDING
    assert [(p.name, p.shape) for p in trainable.params] == [
        ("head0_w", [512, 64]),
        ("head0_b", [64]),
        ("head1_w", [64, 10]),
        ("head1_b", [10]),
    ]
    assert [layer.activation for layer in trainable.layers] == ["relu", "softmax"]
    # The backbone + numpy head is the user's model: same classes as the full graph serves.
    backbone = Backbone(package)
    images = np.load(CNN_IMAGES)
    head = split_head(CNN.read_bytes(), CNN_EMBEDDING).network
    served = Model.load(out).predict(images).classes
    assert (head.forward(backbone(images)).argmax(axis=1) == served).all()
    assert (served == digits_truth()).mean() > 0.9
    assert BACKBONE_NAME in package.members


def test_pack_refuses_a_missing_embedding_or_a_head_that_is_not_dense(tmp_path: Path) -> None:
    out = tmp_path / "cnn.efpkg"
    code, _, err = fleetctl(_pack_args(tmp_path, "/8/Flatten_typo", out))
    assert code != 0 and "no tensor '/8/Flatten_typo'" in err
    assert "/8/Flatten_output_0" in err  # names the tensors that would do
    code, _, err = fleetctl(_pack_args(tmp_path, "/4/Conv_output_0", out))
    assert code != 0 and "must start with a dense layer" in err and "Relu" in err
    assert not out.exists()
    # A conv after the embedding (MaxPool -> Conv) is refused by name, in Python too.
    with pytest.raises(PackageError, match=r"not dense.*Conv"):
        split_head(CNN.read_bytes(), "/3/MaxPool_output_0")


def _instruction(kind: str, trainable_json: str, epochs: int = 1) -> flwire.FlEnvelope:
    config: dict[str, str | int | float] = {"trainable": trainable_json, "server-round": 1}
    if kind == "train":
        config |= {"local-epochs": epochs, "lr": 0.1, "batch-size": 16}
    return flwire.FlEnvelope(kind=kind, message_id=f"m-{kind}", run_id=1, config=config)  # type: ignore[arg-type]


def test_the_device_trains_the_head_on_backbone_embeddings_of_raw_samples(
    tmp_path: Path,
) -> None:
    package = read_package(cnn_head_package(tmp_path))
    trainable = package.manifest.trainable
    assert trainable is not None
    backbone = Backbone(package)
    images, truth = np.load(CNN_IMAGES), digits_truth()
    assert backbone.width == 16 * 16 * 3

    def samples(width: int) -> tuple[np.ndarray, np.ndarray]:
        if width != backbone.width:
            return np.zeros((0, width), np.float32), np.zeros(0, np.int64)
        return images.reshape(len(images), -1).astype(np.float32), truth.astype(np.int64)

    # Start from a scrambled last layer, so training has something to recover.
    rng = np.random.default_rng(3)
    start = dict(package.weights())
    start["head1_w"] = rng.normal(0, 0.05, start["head1_w"].shape).astype(np.float32)
    start["head1_b"] = np.zeros_like(start["head1_b"])
    spec = trainable.model_dump_json()
    before, _ = native.answer(_instruction("evaluate", spec), start, samples, backbone)
    reply, trained = native.answer(_instruction("train", spec, epochs=8), start, samples, backbone)
    assert reply.metrics["num-examples"] == len(truth)
    after, _ = native.answer(_instruction("evaluate", spec), trained, samples, backbone)
    assert before.metrics["accuracy"] < 0.5 < 0.9 < after.metrics["accuracy"]
    assert not np.allclose(trained["head0_w"], start["head0_w"])  # both dense layers train
    # Written back into the user's graph, the trained head serves the same classes.
    model = write_head(CNN.read_bytes(), CNN_EMBEDDING, trained)
    x = (images.transpose(0, 3, 1, 2) / 255.0 - np.array([0.485, 0.456, 0.406])[:, None, None]) / (
        np.array([0.229, 0.224, 0.225])[:, None, None]
    )
    logits = ort.InferenceSession(model).run(None, {"image": x.astype(np.float32)})[0]
    head = split_head(CNN.read_bytes(), CNN_EMBEDDING).network.with_weights(trained)
    assert (logits.argmax(axis=1) == head.forward(backbone(images)).argmax(axis=1)).all()


def test_a_head_round_is_refused_without_the_matching_backbone(tmp_path: Path) -> None:
    package = read_package(cnn_head_package(tmp_path))
    trainable = package.manifest.trainable
    assert trainable is not None
    instruction = _instruction("train", trainable.model_dump_json())

    def samples(width: int) -> tuple[np.ndarray, np.ndarray]:
        return np.ones((4, width), np.float32), np.zeros(4, np.int64)

    with pytest.raises(native.Refused) as refused:
        native.answer(instruction, package.weights(), samples, None)
    assert refused.value.code == flwire.WRONG_MODEL and CNN_EMBEDDING in str(refused.value)


def test_feedback_on_a_head_package_keeps_the_raw_input_the_backbone_reads(
    tmp_path: Path,
) -> None:
    path = cnn_head_package(tmp_path)
    store = SampleStore(tmp_path / "samples.db", max_samples=100)
    service = ModelService(samples=store)
    service.replace(path)
    images = np.load(CNN_IMAGES)
    result, _ = service.infer(images[:2])
    first, second = result.results
    service.feedback(first["id"], int(digits_truth()[0]))
    service.feedback(second["id"], int(digits_truth()[1]))
    backbone = Backbone(read_package(path))
    rows, labels = store.dataset(backbone.width)
    assert labels.tolist() == digits_truth()[:2].tolist()
    assert np.array_equal(rows, images[:2].reshape(2, -1).astype(np.float32))
    assert np.allclose(backbone(rows), backbone(images[:2]))
    store.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"embedding": None, "backbone_file": None}, "a head over an embedding: name it"),
        ({"backbone_file": None}, "embedding and backbone_file are declared together"),
    ],
)
def test_the_manifest_refuses_a_format2_trainable_part_that_is_not_a_whole_head(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    manifest = read_package(cnn_head_package(tmp_path)).manifest
    doc = manifest.model_dump()
    doc["trainable"] |= change
    with pytest.raises(ValidationError, match=message):
        Manifest.model_validate(doc)
    doc = manifest.model_dump()
    doc["labels"] = doc["labels"][:9]
    with pytest.raises(ValidationError, match="the head has 10 classes but the package 9 labels"):
        Manifest.model_validate(doc)
