"""The third-party models of the packer tests: files, spec files, labels, calibration.

The CNN and the small ResNet (``torch.onnx.export``) and the sensor models (skl2onnx)
are committed under tests/data (``python -m models.thirdparty`` makes them); silero-vad's
stateful model is read out of its PyPI wheel, which ``make setup`` downloads
into .cache/wheels (without its dependencies).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.thirdparty import CNN_SPEC as CNN_SPEC
from models.thirdparty import IFOREST_SPEC as IFOREST_SPEC
from models.thirdparty import RESNET_SIZE, digits_images
from models.thirdparty import RESNET_SPEC as RESNET_SPEC
from models.thirdparty import VAD_SPEC as VAD_SPEC

from .harness import require

if TYPE_CHECKING:
    from edgefleet_contract.package import ModelPackage
    from fleet_server.modelkit.pack import PackRequest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
CNN = DATA / "digits_cnn_torch.onnx"
CNN_IMAGES = DATA / "digits_images.npy"
RESNET = DATA / "digits_resnet_torch.onnx"
IFOREST = DATA / "sensor_iforest.onnx"
CLASSIFIER = DATA / "sensor_classifier.onnx"
SENSOR_CSV = DATA / "sensor_normal.csv"
WHEELS = ROOT / ".cache" / "wheels"
SILERO_MEMBER = "silero_vad/data/silero_vad.onnx"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def digit_labels(folder: Path) -> Path:
    return write(folder, "labels.txt", "\n".join(f"digit-{i}" for i in range(10)) + "\n")


def digits_truth() -> np.ndarray:
    """The true classes of the committed CNN calibration images (digits 1500..1699)."""
    from sklearn.datasets import load_digits

    return np.asarray(load_digits().target[1500:1700])


def resnet_images(count: int = 200) -> np.ndarray:
    """The ResNet's held-out images at its 64x64 size (digits 1500..; the same classes as
    :func:`digits_truth`), made from scikit-learn's digits as they were for training."""
    return digits_images(RESNET_SIZE)[0][1500 : 1500 + count]


def resnet_request(folder: Path, **fields: Any) -> PackRequest:
    """The torch ResNet as ``digits-resnet`` 1.0.0 with its labels, spec and 200 held-out
    images to calibrate on; ``fields`` add to (or replace) those."""
    from fleet_server.modelkit.pack import PackRequest

    images = folder / "resnet_images.npy"
    np.save(images, resnet_images())
    return PackRequest(
        **{
            "model": RESNET,
            "name": "digits-resnet",
            "version": "1.0.0",
            "labels": digit_labels(folder),
            "calibration": images,
            "spec": write(folder, "resnet.toml", RESNET_SPEC),
            **fields,
        }
    )


def silero_model(folder: Path) -> Path:
    """silero-vad's ONNX model taken from its wheel, or the test is skipped saying why."""
    wheels = sorted(WHEELS.glob("silero_vad-*.whl"))
    require(wheels, f"the silero-vad wheel in {WHEELS}", "`make thirdparty-wheels` downloads it")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        data = wheel.read(SILERO_MEMBER)
    path = folder / "silero_vad.onnx"
    path.write_bytes(data)
    return path


def audio(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """16 kHz test audio: quiet noise, then a voiced, pitch-varying tone with harmonics."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    pitch = 140 + 40 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12)) * (t > seconds / 2)
    return (0.2 * voiced + 0.005 * rng.normal(size=t.size)).astype(np.float32)


def vad_calibration(folder: Path) -> Path:
    chunks = audio()[: (32000 // 512) * 512].reshape(-1, 1, 512)
    path = folder / "vad_calibration.npy"
    np.save(path, chunks)
    return path


def two_input_package(folder: Path) -> Path:
    """A package of a small ONNX graph with inputs ``a``, ``b`` and outputs ``sum``, ``prod``
    (a regression task), packed from an ``.npz`` with one array per input."""
    from onnx import TensorProto, helper

    from fleet_server.modelkit.pack import PackRequest, pack

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Mul", ["a", "b"], ["prod"]),
        ],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 3]) for n in "ab"],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 3]) for n in ("sum", "prod")],
    )
    model = folder / "two.onnx"
    model.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    calib = folder / "two.npz"
    rng = np.random.default_rng(1)
    np.savez(
        calib, a=rng.random((10, 3), dtype=np.float32), b=rng.random((10, 3), dtype=np.float32)
    )
    request = PackRequest(
        model=model,
        name="two",
        version="1.0.0",
        task="regression",
        calibration=calib,
        output=folder / "two.efpkg",
    )
    return pack(request)[1]


CNN_EMBEDDING = "/8/Flatten_output_0"
"""The torch CNN's flattened conv features: its two Linear layers after it are the head."""


def cnn_request(folder: Path, **fields: Any) -> PackRequest:
    """The torch CNN as ``digits-torch`` 1.0.0 with its labels, images and spec; ``fields``
    add to (or replace) those."""
    from fleet_server.modelkit.pack import PackRequest

    return PackRequest(
        **{
            "model": CNN,
            "name": "digits-torch",
            "version": "1.0.0",
            "labels": digit_labels(folder),
            "calibration": CNN_IMAGES,
            "spec": write(folder, "cnn.toml", CNN_SPEC),
            **fields,
        }
    )


def iforest_request(folder: Path, **fields: Any) -> PackRequest:
    """The IsolationForest as the anomaly model ``pump-anomaly`` 1.0.0 with its sensor CSV and
    spec; ``fields`` add to (or replace) those."""
    from fleet_server.modelkit.pack import PackRequest

    return PackRequest(
        **{
            "model": IFOREST,
            "name": "pump-anomaly",
            "version": "1.0.0",
            "task": "anomaly",
            "calibration": SENSOR_CSV,
            "spec": write(folder, "iforest.toml", IFOREST_SPEC),
            **fields,
        }
    )


def classifier_request(folder: Path, **fields: Any) -> PackRequest:
    """The sensor classifier as ``pump-state`` 1.0.0 (labels idle, running, overload) with its
    sensor CSV; ``fields`` add to (or replace) those."""
    from fleet_server.modelkit.pack import PackRequest

    return PackRequest(
        **{
            "model": CLASSIFIER,
            "name": "pump-state",
            "version": "1.0.0",
            "labels": write(folder, "states.txt", "idle\nrunning\noverload\n"),
            "calibration": SENSOR_CSV,
            **fields,
        }
    )


def vad_request(folder: Path, **fields: Any) -> PackRequest:
    """silero-vad 6.2.3 (the model from its wheel unless ``model`` is given) with audio chunks
    to calibrate on and its spec."""
    from fleet_server.modelkit.pack import PackRequest

    return PackRequest(
        **{
            "model": fields.pop("model", None) or silero_model(folder),
            "name": "silero-vad",
            "version": "6.2.3",
            "calibration": vad_calibration(folder),
            "spec": write(folder, "vad.toml", VAD_SPEC),
            **fields,
        }
    )


def pack_args(request: PackRequest) -> list[str]:
    """The same request as ``fleetctl models pack`` arguments (each set field an option)."""
    args = [str(request.model)]
    for option in (
        "name",
        "version",
        "task",
        "labels",
        "calibration",
        "quantize",
        "spec",
        "embedding",
        "output",
    ):
        value = getattr(request, option)
        if value is not None:
            args += [f"--{option}", str(value)]
    return args


def cli_pack(request: PackRequest) -> ModelPackage:
    """Pack ``request`` with ``fleetctl models pack`` (which must succeed); the package it wrote."""
    from edgefleet_contract.package import read_package

    from .fleetctl_kit import fleetctl

    code, _, err = fleetctl(["models", "pack", *pack_args(request)])
    assert code == 0, err
    assert request.output is not None
    return read_package(request.output)


def cnn_head_package(folder: Path, embedding: str = CNN_EMBEDDING) -> Path:
    """The torch CNN packed with a trainable dense head after ``embedding``."""
    from fleet_server.modelkit.pack import pack

    output = folder / "digits-torch-1.0.0-onnx-float32.efpkg"
    return pack(cnn_request(folder, embedding=embedding, output=output))[1]
