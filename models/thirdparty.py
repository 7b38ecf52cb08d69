"""``python -m models.thirdparty``: make the third-party model fixtures under tests/data.

These are models written by other tools, the way users bring them, so the
packer and the agent are tested on graphs edgefleet's own exporters never
write.  The test suite uses the committed files and does not need torch:

* ``digits_cnn_torch.onnx``: a CNN with Conv/BatchNorm/ReLU/MaxPool/Linear
  defined in PyTorch, trained on scikit-learn's digits (resized to 16x16 RGB
  images, channel-first, ImageNet-style mean/std) and written by
  ``torch.onnx.export`` with a dynamic batch axis.  Needs ``torch``.
* ``digits_resnet_torch.onnx``: a small ResNet (a stride-2 stem and three
  basic blocks with skip connections, 24/48/96 channels, global average pool)
  on the same digits as 64x64 RGB images, written the same way.  It is the
  conv model of more than a millisecond per call on a laptop-class CPU, where
  the agent's per-call costs and int8 kernels are measured on realistic work;
  its images come from :func:`digits_images` at ``RESNET_SIZE`` (nothing is
  committed but the model).  Needs ``torch``.
* ``sensor_iforest.onnx`` + ``sensor_normal.csv``: an IsolationForest on four
  sensor-like tabular features, written by skl2onnx (outputs ``label`` and
  ``scores``; lower scores are more anomalous).
* ``sensor_classifier.onnx``: a logistic regression on the same features
  (three machine states) written by skl2onnx with ``zipmap=False``.

Seeded: running it again writes files that behave the same (torch's exporter
does not promise byte-identical output across versions).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
SEED = 11
FEATURES = ["temperature_c", "vibration_mm_s", "current_a", "pressure_bar"]
STATES = ["idle", "running", "overload"]
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
CNN_SIZE = 16
RESNET_SIZE = 64

# The spec files that pack these models (tests, benchmarks and docs use the same ones).
CNN_SPEC = """
[inputs.image.preprocessing]
scale = 0.00392156862745098
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
layout = "nchw"
image = { height = 16, width = 16, channels = 3 }
"""

RESNET_SPEC = CNN_SPEC.replace("height = 16, width = 16", "height = 64, width = 64")

IFOREST_SPEC = """
[task]
output = "scores"
higher_is_anomalous = false   # IsolationForest: lower scores are more anomalous
threshold_quantile = 0.98
[inputs.X.preprocessing]
features = ["temperature_c", "vibration_mm_s", "current_a", "pressure_bar"]
"""

VAD_SPEC = """
[task]
kind = "regression"
outputs = [{ name = "output", units = ["speech probability"] }]
[inputs.input]
shape = [1, 512]
[inputs.state]
role = "state"
state_from = "stateN"
shape = [2, 1, 128]
[inputs.sr]
role = "constant"
value = [16000]
[outputs.stateN]
shape = [2, 1, 128]
"""


def sensor_data(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Normal operation of a pump in three states: (features, state index)."""
    rng = np.random.default_rng(seed)
    state = rng.integers(0, 3, n)
    centre = np.array([[35, 0.5, 0.2, 1.0], [55, 2.5, 4.0, 3.5], [75, 6.0, 9.0, 3.0]])
    spread = np.array([3.0, 0.3, 0.4, 0.2])
    x = centre[state] + rng.normal(0, 1, (n, 4)) * spread
    return x.astype(np.float32), state


def digits_images(size: int = CNN_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Digits as (n, size, size, 3) uint8 images (HWC, what a camera app holds) and labels."""
    from sklearn.datasets import load_digits

    from edgefleet_contract.preprocess import resize

    digits = load_digits()
    gray = (digits.images / 16.0 * 255.0).astype(np.float32)[..., None]
    big = resize(gray, size, size)
    rgb = np.repeat(np.clip(np.rint(big), 0, 255).astype(np.uint8), 3, axis=-1)
    return rgb, digits.target


def _tensors(images: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
    """Images normalised as the spec declares (ImageNet mean/std, NCHW) and their labels."""
    import torch

    normal = (images.astype(np.float32) / 255.0 - np.array(MEAN, np.float32)) / np.array(
        STD, np.float32
    )
    x = torch.from_numpy(np.ascontiguousarray(normal.transpose(0, 3, 1, 2)))
    return x, torch.from_numpy(y.astype(np.int64))


def _train(name: str, net: Any, x: Any, target: Any, epochs: int) -> None:
    """Adam on the first 1500 digits, then the held-out accuracy printed (eval mode)."""
    import torch
    from torch import nn

    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        net.train()
        for batch in torch.randperm(1500).split(64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[batch]), target[batch])
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x[1500:]).argmax(1) == target[1500:]).float().mean().item()
    print(f"{name} held-out accuracy {accuracy:.3f}")


def _export(net: Any, example: Any, out: Path) -> None:
    import torch

    torch.onnx.export(
        net,
        (example,),
        str(out),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def build_cnn(out: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    images, y = digits_images()
    x, target = _tensors(images, y)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    _train("torch CNN", net, x, target, epochs=8)
    _export(net, x[:1], out)
    np.save(out.with_name("digits_images.npy"), images[1500:1700])


def build_resnet(out: Path) -> None:
    """The small ResNet, trained six epochs from a fixed seed (about ten minutes on 2 cores)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        """Two 3x3 Conv/BatchNorm with a skip connection (a 1x1 Conv where the shape changes)."""

        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
            self.skip: nn.Module = nn.Identity()
            if cin != cout or stride != 1:
                self.skip = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )
            self.relu = nn.ReLU()

        def forward(self, x: Any) -> Any:
            return self.relu(self.body(x) + self.skip(x))

    torch.manual_seed(SEED)
    x, target = _tensors(*digits_images(RESNET_SIZE))
    w = 24
    net = nn.Sequential(
        nn.Conv2d(3, w, 3, 2, 1, bias=False),
        nn.BatchNorm2d(w),
        nn.ReLU(),
        Block(w, w, 1),
        Block(w, 2 * w, 2),
        Block(2 * w, 4 * w, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, 10),
    )
    _train("torch ResNet", net, x, target, epochs=6)
    _export(net, x[:1], out)


def build_sklearn(out_forest: Path, out_classifier: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.ensemble import IsolationForest
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, state = sensor_data(2000)
    forest = IsolationForest(n_estimators=50, random_state=SEED).fit(x)
    onnx = to_onnx(forest, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    out_forest.write_bytes(onnx.SerializeToString())
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, state)
    onnx = to_onnx(
        classifier, x[:1], options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3}
    )
    out_classifier.write_bytes(onnx.SerializeToString())
    header = ",".join(["machine", *FEATURES, "state"])
    rows = [
        f"pump-{i % 3},{','.join(f'{v:.4f}' for v in row)},{STATES[s]}"
        for i, (row, s) in enumerate(zip(x[:400], state[:400], strict=True))
    ]
    out_forest.with_name("sensor_normal.csv").write_text("\n".join([header, *rows]) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA)
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.skip_torch:
        build_cnn(args.out / "digits_cnn_torch.onnx")
        build_resnet(args.out / "digits_resnet_torch.onnx")
    build_sklearn(args.out / "sensor_iforest.onnx", args.out / "sensor_classifier.onnx")


if __name__ == "__main__":
    main()
