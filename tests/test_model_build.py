"""Building packages from float weights: the reference build path and the federated one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bsdiff4
import numpy as np
import pytest

from agent.runtime import Model
from edgefleet_contract.errors import ModelError
from edgefleet_contract.package import LayerSpec, Lineage, parse_package, read_package
from fleet_server.cbpe import CALIBRATION_NAME, Calibration
from fleet_server.modelkit import Network, build_package
from fleet_server.modelkit.digits import LABELS, PREPROCESSING, split
from models.build import REFERENCES, Reference, write_flavors
from models.train import init_network, train


def digits_package(network: Network, **fields: Any) -> bytes:
    """``network`` packaged as digits 1.0.0 (float ONNX) with the digits preprocessing, labels
    and training rows as reference; ``fields`` change any of those."""
    defaults: dict[str, Any] = {
        "name": "digits",
        "version": "1.0.0",
        "flavor": "onnx-float32",
        "preprocessing": PREPROCESSING,
        "labels": LABELS,
        "lineage": Lineage(source="build"),
        "created_at": 1.7e9,
    }
    if "reference" not in fields:
        defaults["reference"] = split().x_train
    return build_package(network, **{**defaults, **fields})


@pytest.fixture(scope="module")
def trained() -> Network:
    ref = REFERENCES["digits"]
    data = split()
    network = init_network(ref.input_shape, ref.layers, ref.widths, seed=1)
    x = PREPROCESSING.apply(data.x_train)
    return train(network, x, data.y_train, epochs=8, seed=1)


def test_split_is_stable_stratified_and_matches_the_stored_holdout() -> None:
    a, b = split(), split()
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert len(a.y_test) + len(a.y_train) == 1797
    assert np.bincount(a.y_test).min() >= 30
    stored = np.load(Path(__file__).with_name("data") / "digits_holdout.npz")
    np.testing.assert_array_equal(stored["x"], a.x_test)
    np.testing.assert_array_equal(stored["y"], a.y_test)


def test_build_int8_packages_that_load_and_predict(trained: Network, tmp_path: Path) -> None:
    data = split()
    paths = write_flavors(
        trained,
        REFERENCES["digits"],
        tmp_path,
        flavors=["onnx-int8", "tflite-int8"],
        created_at=1.7e9,
    )
    for path in paths:
        model = Model.load(path)
        accuracy = float((model.predict(data.x_test).classes == data.y_test).mean())
        assert accuracy > 0.85, (path.name, accuracy)
        m = model.manifest
        assert m.quantization.dtype == "int8" and m.lineage.source == "build"
        assert len(m.drift.features) == 64 and m.drift.samples == len(data.x_train)
        assert sorted({int(np.argmax(e)) for e in m.self_test.expected}) == list(range(10))
        assert path.stat().st_size < 1_000_000
        # The calibration on the held-out set: as many answers as it has, right as often.
        cal = Calibration.from_json(json.loads(read_package(path).members[CALIBRATION_NAME]))
        assert sum(cal.counts) == len(data.y_test)
        assert sum(cal.correct) / sum(cal.counts) == pytest.approx(accuracy, abs=0.02)


def test_federated_weights_round_trip_into_a_new_version(trained: Network, tmp_path: Path) -> None:
    """The path a federated round takes: package -> float network -> new weights -> package."""
    first = tmp_path / "v1.efpkg"
    first.write_bytes(digits_package(trained))
    network = Network.from_package(read_package(first))
    for name, array in trained.weights.items():
        np.testing.assert_array_equal(network.weights[name], array)
    moved = network.with_weights({k: v * 0.9 for k, v in network.weights.items()})
    second = digits_package(
        moved,
        version="1.1.0-fl.3",
        flavor="tflite-float32",
        reference=split().x_train[:200],
        lineage=Lineage(source="federated", run_id="run-3", parent="digits@1.0.0"),
    )
    path = tmp_path / "v2.efpkg"
    path.write_bytes(second)
    model = Model.load(path)
    assert model.manifest.lineage.parent == "digits@1.0.0"
    np.testing.assert_allclose(
        model.predict(split().x_test[:20]).probabilities,
        moved.forward(PREPROCESSING.apply(split().x_test[:20])),
        atol=1e-5,
    )


def test_inconsistent_networks_and_inputs_are_refused(trained: Network) -> None:
    with pytest.raises(ModelError, match="lack"):
        trained.with_weights({})
    with pytest.raises(ModelError, match="fit"):
        Network((63,), trained.layers, trained.weights)
    no_softmax = (trained.layers[0], trained.layers[1].model_copy(update={"activation": "relu"}))
    with pytest.raises(ModelError, match="softmax"):
        Network(trained.input_shape, no_softmax, trained.weights)
    with pytest.raises(ModelError, match="reference rows"):
        digits_package(trained, reference=np.zeros((5, 3)), created_at=None)


def test_conv_layers_export_identically_on_both_runtimes() -> None:
    """A tiny conv net (untrained) through every layer kind, checked by the builder itself."""
    ref = Reference(
        "tiny-cnn",
        (8, 8, 1),
        [
            LayerSpec(kind="upsample2d", size=2),
            LayerSpec(kind="conv2d", weight="c.w", bias="c.b", activation="relu"),
            LayerSpec(kind="maxpool2d", size=4),
            LayerSpec(kind="flatten"),
            LayerSpec(kind="dense", weight="d.w", bias="d.b", activation="softmax"),
        ],
        [4, 10],
        epochs=0,
        trainable=True,
    )
    network = init_network(ref.input_shape, ref.layers, ref.widths, seed=3)
    for flavor in ("onnx-float32", "tflite-float32"):
        data = digits_package(
            network,
            name="tiny-cnn",
            version="0.1.0",
            flavor=flavor,
            reference=split().x_train[:100],
            created_at=None,
        )
        # small: the tiny network, its drift reference and the multivariate check's PCA
        # (a 64-feature basis, about 20 KB) fit in well under 80 KB
        assert len(data) < 80_000


def test_head_only_update_makes_a_small_delta(trained: Network) -> None:
    """A retrained head changes a few KiB of the package, so its bsdiff patch stays small."""

    head = trained.layers[-1]
    assert head.weight and head.bias
    tuned = trained.with_weights(
        {**trained.weights, head.weight: trained.weights[head.weight] * 1.05 + 0.01}
    )
    old, new = digits_package(trained), digits_package(tuned, version="1.1.0")
    patch = bsdiff4.diff(old, new)
    assert bsdiff4.patch(old, patch) == new
    assert len(patch) <= 0.10 * len(new), (len(patch), len(new))
    before, after = (parse_package(d).manifest.self_test.inputs for d in (old, new))
    assert sum(row in before for row in after) >= len(after) // 2  # mostly the same vectors
