"""``python -m models.build``: train the reference models and write their packages to dist/.

Two models, each in every flavour that checks out (onnx/tflite x float32/int8):

* ``digits``: MLP 64-32-10; its whole float weights ship in the package so
  federated rounds can train them on devices.
* ``digits-cnn``: a small conv net that upsamples the 8x8 image to 32x32 and
  runs four 3x3 convolutions, so one inference costs ~1 ms on a laptop-class
  core: slow enough that per-call overheads are measured honestly.  Its
  weights are not shipped (it is not federated-trainable), keeping it small.

Training is seeded and single-pass deterministic; ``SOURCE_DATE_EPOCH`` pins
``created_at`` for byte-identical rebuilds.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet_contract.package import SUFFIX, LayerSpec, Lineage
from fleet_server.modelkit import FLAVORS, Flavor, Network, build_package
from fleet_server.modelkit.digits import IMAGE_SHAPE, LABELS, PREPROCESSING, split

from .train import init_network, train

DIST = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models"
VERSION = "1.0.0"
SEED = 7


@dataclass(frozen=True)
class Reference:
    name: str
    input_shape: tuple[int, ...]
    layers: list[LayerSpec]
    widths: list[int]
    epochs: int
    trainable: bool


def _dense(i: int, activation: str = "relu") -> LayerSpec:
    return LayerSpec.model_validate(
        {
            "kind": "dense",
            "weight": f"dense{i}.weight",
            "bias": f"dense{i}.bias",
            "activation": activation,
        }
    )


def _conv(i: int) -> LayerSpec:
    return LayerSpec(
        kind="conv2d", weight=f"conv{i}.weight", bias=f"conv{i}.bias", activation="relu"
    )


def _pool() -> LayerSpec:
    return LayerSpec(kind="maxpool2d", size=2)


REFERENCES = {
    "digits": Reference(
        "digits", (64,), [_dense(0), _dense(1, "softmax")], [32, 10], epochs=60, trainable=True
    ),
    "digits-cnn": Reference(
        "digits-cnn",
        IMAGE_SHAPE,
        [
            LayerSpec(kind="upsample2d", size=4),
            _conv(0),
            _conv(1),
            _pool(),
            _conv(2),
            _pool(),
            _conv(3),
            _pool(),
            LayerSpec(kind="flatten"),
            _dense(0),
            _dense(1, "softmax"),
        ],
        [32, 48, 64, 64, 64, 10],
        epochs=6,
        trainable=False,
    ),
}


def train_reference(ref: Reference, *, seed: int = SEED) -> Network:
    data = split()
    network = init_network(ref.input_shape, ref.layers, ref.widths, seed=seed)
    x = PREPROCESSING.apply(data.x_train)
    return train(network, x, data.y_train, epochs=ref.epochs, seed=seed)


def accuracy(network: Network) -> float:
    data = split()
    predicted = network.forward(PREPROCESSING.apply(data.x_test)).argmax(axis=1)
    return float((predicted == data.y_test).mean())


def write_flavors(
    network: Network,
    ref: Reference,
    out: Path,
    *,
    flavors: Sequence[Flavor] = FLAVORS,
    version: str = VERSION,
    created_at: float | None = None,
) -> list[Path]:
    """Package ``network`` in each flavour into ``out``; returns the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for flavor in flavors:
        data = build_package(
            network,
            name=ref.name,
            version=version,
            flavor=flavor,
            preprocessing=PREPROCESSING,
            labels=LABELS,
            reference=split().x_train,
            calibration=(split().x_test, split().y_test),
            lineage=Lineage(source="build", run_id=f"models.build-seed{SEED}"),
            trainable=ref.trainable,
            created_at=created_at,
        )
        path = out / f"{ref.name}-{version}-{flavor}{SUFFIX}"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.build", description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"models to build (default: {' '.join(REFERENCES)})"
    )
    parser.add_argument("--out", type=Path, default=DIST)
    args = parser.parse_args(argv)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    created_at = float(epoch) if epoch else None
    unknown = sorted(set(args.names) - set(REFERENCES))
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(REFERENCES)}")
    for name in args.names or REFERENCES:
        ref = REFERENCES[name]
        started = time.monotonic()
        network = train_reference(ref)
        print(
            f"{name}: trained in {time.monotonic() - started:.0f}s, "
            f"held-out accuracy {accuracy(network):.3f}"
        )
        for path in write_flavors(network, ref, args.out, created_at=created_at):
            print(f"  wrote {path.name} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    np.seterr(over="raise", invalid="raise")
    main()
