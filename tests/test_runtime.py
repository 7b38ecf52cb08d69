"""Agent inference runtimes on the shipped packages: real ONNX Runtime and TFLite.

Set ``EDGEFLEET_TFLITE_BACKEND=tflite_runtime`` (``.ci/tflite-legacy.sh`` does)
to run the same tests on the legacy ``tflite_runtime`` interpreter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agent.runtime import TFLITE_ENV, Model, available_runtimes
from edgefleet_contract.errors import ModelError, RuntimeUnavailable, SelfTestFailed
from edgefleet_contract.package import Manifest, pack_package, parse_package, read_package

DIST = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models"
PACKAGES = sorted(DIST.glob("*.efpkg"))
TFLITE = [p for p in PACKAGES if "tflite" in p.name]
ONNX = [p for p in PACKAGES if "onnx" in p.name]
LEGACY = os.environ.get(TFLITE_ENV) == "tflite_runtime"


def _holdout() -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits, stored beside the test so the legacy venv needs no scikit-learn."""
    data = np.load(Path(__file__).with_name("data") / "digits_holdout.npz")
    return data["x"], data["y"]


def _flavor(path: Path) -> str:
    return path.name.rsplit("-", 2)[-2] + "-" + path.name.rsplit("-", 1)[-1].split(".")[0]


@pytest.mark.parametrize("path", TFLITE if LEGACY else PACKAGES, ids=lambda p: p.name)
def test_package_is_right_or_refused(path: Path) -> None:
    """Every shipped package either serves accurate predictions or is refused at load:
    never silently wrong, whatever runtime build this device has."""
    x, y = _holdout()
    try:
        model = Model.load(path)
    except SelfTestFailed as exc:
        assert "int8" in path.name, f"a float package must never fail its self-test: {exc}"
        assert "vector" in str(exc) or "top-1" in str(exc)
        return
    accuracy = float((model.predict(x).classes == y).mean())
    assert accuracy >= 0.9, f"{path.name} passed its self-test but scored {accuracy:.3f}"
    assert model.self_test.vectors >= 10
    assert model.ref.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(LEGACY, reason="ONNX Runtime is not part of the legacy TFLite venv")
def test_int8_tracks_float_on_every_runtime() -> None:
    x, y = _holdout()
    for name in {p.name.split("-1.0.0")[0] for p in PACKAGES}:
        for runtime in ("onnx", "tflite"):
            float_path = DIST / f"{name}-1.0.0-{runtime}-float32.efpkg"
            int8_path = DIST / f"{name}-1.0.0-{runtime}-int8.efpkg"
            if not (float_path.exists() and int8_path.exists()):
                continue
            acc = [
                float((Model.load(p).predict(x).classes == y).mean())
                for p in (float_path, int8_path)
            ]
            assert abs(acc[0] - acc[1]) <= 0.03, (name, runtime, acc)


@pytest.mark.skipif(LEGACY, reason="ONNX Runtime is not part of the legacy TFLite venv")
def test_onnx_and_tflite_float_agree() -> None:
    x, _ = _holdout()
    onnx = Model.load(DIST / "digits-1.0.0-onnx-float32.efpkg")
    tflite = Model.load(DIST / "digits-1.0.0-tflite-float32.efpkg")
    np.testing.assert_allclose(
        onnx.predict(x).probabilities, tflite.predict(x).probabilities, atol=1e-5
    )


@pytest.fixture(scope="module", params=TFLITE[:1] if LEGACY else [ONNX[0], TFLITE[0]], ids=_flavor)
def model(request: pytest.FixtureRequest) -> Model:
    return Model.load(request.param, threads=2)


def test_predict_shapes_and_fields(model: Model) -> None:
    x, _ = _holdout()
    one = model.predict(x[0])
    assert len(one) == 1 and one.probabilities.shape == (1, 10)
    assert one.labels[0] == str(one.classes[0])
    assert one.confidence[0] == pytest.approx(one.probabilities[0].max())
    assert np.isclose(one.probabilities.sum(), 1.0, atol=1e-5)
    batch = model.predict(x[:7])
    np.testing.assert_allclose(batch.probabilities[0], one.probabilities[0], atol=1e-5)
    as_ints = model.predict(x[:7].astype(np.int64))
    np.testing.assert_array_equal(as_ints.classes, batch.classes)
    assert model.predict(x[:7].reshape(7, 8, 8)).classes.tolist() == batch.classes.tolist()
    assert model.predict(x[0]).classes[0] == one.classes[0]  # back to batch 1 after a resize


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((2, 63)), "expects"),
        (np.zeros((0, 64)), "expects"),
        (np.zeros((5000, 64)), "expects"),
        ([["a"] * 64], "numbers"),
        ([[1.0] * 64, [1.0] * 3], "numeric|expects"),
        (np.full((1, 64), np.nan), "NaN"),
        (np.full((1, 64), 1e39), "NaN or infinite"),
        ([[1 + 2j] * 64], "numbers"),
        (np.float32(3.0), "expects"),
    ],
)
def test_bad_input_is_a_clear_model_error(model: Model, bad: object, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        model.predict(bad)  # type: ignore[arg-type]


def test_one_row_gives_what_a_batch_gives(model: Model) -> None:
    """A single row takes a shorter path than a batch; its answer must not differ."""
    x, _ = _holdout()
    batch = model.predict(x[:20])
    for i in range(20):
        one = model.predict(x[i])
        np.testing.assert_array_equal(one.probabilities, batch.probabilities[i : i + 1])
        np.testing.assert_array_equal(one.classes, batch.classes[i : i + 1])
        np.testing.assert_array_equal(one.confidence, batch.confidence[i : i + 1])
        np.testing.assert_array_equal(one.confidence, one.probabilities.max(axis=1))
        assert one.labels == batch.labels[i : i + 1]
        assert (one.classes.dtype, one.confidence.dtype) == (np.intp, batch.confidence.dtype)
    assert not np.shares_memory(one.confidence, one.probabilities)
    assert repr(one).startswith("Prediction(probabilities=array(")
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.labels = ("x",)  # type: ignore[misc]


def test_predict_rows_are_the_raw_rows_as_float32(model: Model) -> None:
    x, _ = _holdout()
    prediction, rows = model.predict_rows(x[:3].astype(np.int64).reshape(3, 8, 8))
    assert rows.dtype == np.float32 and rows.shape == (3, 64)
    np.testing.assert_array_equal(rows, x[:3].astype(np.float32))  # before preprocessing
    np.testing.assert_array_equal(prediction.classes, model.predict(x[:3]).classes)


@pytest.mark.parametrize(
    ("scale", "offset", "raw"),
    [
        (1.0, 0.0, lambda x: x * 0.0625),  # no preprocessing at all
        (0.0625, 1.0, lambda x: x - 16.0),  # scale and offset
        ([1.0] * 64, [-1.0] * 64, lambda x: x * 0.0625 + 1.0),  # per-feature offset only
    ],
    ids=["identity", "scale-offset", "offset-per-feature"],
)
def test_every_preprocessing_form_feeds_the_same_tensor(
    tmp_path: Path, scale: object, offset: object, raw: Callable[[np.ndarray], np.ndarray]
) -> None:
    """The shipped packages scale by 1/16 with no offset; a package whose preprocessing
    skips the multiply, or adds an offset (scalar or per feature), must reach the same
    model input, exactly, from correspondingly shifted raw features."""
    x, _ = _holdout()
    path = TFLITE[0] if LEGACY else ONNX[0]
    original = read_package(path).manifest
    assert original.preprocessing.model_dump() == {"scale": 0.0625, "offset": 0.0}
    inputs = raw(np.asarray(original.self_test.inputs, dtype=np.float64)).tolist()
    shifted = _repack(
        path,
        tmp_path / "shifted.efpkg",
        preprocessing={"scale": scale, "offset": offset},
        self_test=original.self_test.model_copy(update={"inputs": inputs}).model_dump(),
    )
    model, reference = Model.load(shifted), Model.load(path)
    for rows in (x[:9], x[9]):
        np.testing.assert_array_equal(
            model.predict(raw(rows.astype(np.float64))).probabilities,
            reference.predict(rows).probabilities,
        )


def test_concurrent_predicts_match_serial(model: Model) -> None:
    x, _ = _holdout()
    expected = model.predict(x).classes
    results: list[bool] = []

    def worker(size: int) -> None:
        for start in range(0, len(x), size):
            got = model.predict(x[start : start + size]).classes
            results.append(bool((got == expected[start : start + size]).all()))

    threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 3, 16, 50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results and all(results)


def _repack(path: Path, out: Path, model_bytes: bytes | None = None, **changes: object) -> Path:
    """A valid, hash-consistent copy of ``path`` with some of its content replaced."""
    package = read_package(path)
    doc = {**package.manifest.model_dump(), **changes, "files": []}
    files = dict(package.members)
    if model_bytes is not None:
        files[package.manifest.model_file] = model_bytes
    out.write_bytes(pack_package(Manifest.model_validate(doc), files))
    return out


@pytest.mark.parametrize("path", TFLITE if LEGACY else [ONNX[0], TFLITE[0]], ids=lambda p: p.name)
def test_expected_outputs_that_do_not_reproduce_are_refused(path: Path, tmp_path: Path) -> None:
    spec = read_package(path).manifest.self_test
    rolled = [row[1:] + row[:1] for row in spec.expected]  # every class shifted by one
    bad = _repack(
        path,
        tmp_path / "bad.efpkg",
        self_test=spec.model_copy(update={"expected": rolled}).model_dump(),
    )
    with pytest.raises(SelfTestFailed, match=r"vector \d+ differs by .* tolerance") as info:
        Model.load(bad)
    assert "top-1 class agrees on" in str(info.value)


@pytest.mark.skipif(LEGACY, reason="needs the builder (server side)")
def test_a_silently_wrong_model_file_is_caught(tmp_path: Path) -> None:
    """A model that loads and runs but computes something else (as a broken int8 kernel
    would) must be refused by the self-test, not served."""
    from fleet_server.modelkit.network import Network
    from fleet_server.modelkit.tflite_export import to_tflite

    path = DIST / "digits-1.0.0-tflite-int8.efpkg"
    network = Network.from_package(read_package(path))
    rng = np.random.default_rng(0)
    skewed = network.with_weights(
        {k: v + rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in network.weights.items()}
    )
    wrong = _repack(path, tmp_path / "wrong.efpkg", to_tflite(skewed, int8_weights=True))
    assert parse_package(wrong.read_bytes())  # a valid, hash-consistent package ...
    with pytest.raises(SelfTestFailed, match="refusing the model"):
        Model.load(wrong)  # ... that this device refuses


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "tflite" in available_runtimes()
    monkeypatch.setenv(TFLITE_ENV, "tensorflow")
    with pytest.raises(RuntimeUnavailable, match="not a TFLite backend"):
        Model.load(TFLITE[0])
    if not LEGACY:
        monkeypatch.setenv(TFLITE_ENV, "tflite_runtime")
        with pytest.raises(RuntimeUnavailable):
            Model.load(TFLITE[0])
