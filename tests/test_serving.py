"""ModelService on the shipped packages: atomic swaps, refused updates, metrics, feedback."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from agent.runtime import Model
from agent.samples import SampleStore
from agent.serving import ModelService, NoModel, describe
from edgefleet_contract.errors import ModelError, NotFound, PackageError, SelfTestFailed
from edgefleet_contract.package import Manifest, pack_package, read_package

DIST = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models"
MLP = DIST / "digits-1.0.0-onnx-int8.efpkg"
MLP_TFLITE = DIST / "digits-1.0.0-tflite-float32.efpkg"


def _holdout() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(Path(__file__).with_name("data") / "digits_holdout.npz")
    return data["x"].astype(np.float32), data["y"]


def _repack(path: Path, out: Path, **changes: object) -> Path:
    package = read_package(path)
    doc = {**package.manifest.model_dump(), **changes, "files": []}
    out.write_bytes(pack_package(Manifest.model_validate(doc), dict(package.members)))
    return out


def corrupted(tmp_path: Path) -> Path:
    """The package with bytes in the middle flipped (a torn download)."""
    data = bytearray(MLP.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    out = tmp_path / "corrupt.efpkg"
    out.write_bytes(bytes(data))
    return out


def wrong_hash(tmp_path: Path) -> Path:
    """A well-formed zip whose manifest lists a SHA-256 the model file does not have."""
    package = read_package(MLP)
    manifest = package.manifest.model_copy(
        update={
            "files": [
                f.model_copy(update={"sha256": "0" * 64})
                if f.path == package.manifest.model_file
                else f
                for f in package.manifest.files
            ]
        }
    )
    out = tmp_path / "wrong-hash.efpkg"
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("manifest.json", manifest.model_dump_json())
        for name, data in package.members.items():
            archive.writestr(name, data)
    return out


def failing_self_test(tmp_path: Path) -> Path:
    """A hash-consistent int8 package whose recorded outputs this runtime cannot reproduce."""
    spec = read_package(MLP).manifest.self_test
    rolled = [row[1:] + row[:1] for row in spec.expected]
    return _repack(
        MLP, tmp_path / "selftest.efpkg", self_test=spec.model_copy(update={"expected": rolled})
    )


BAD = {
    "corrupt": (corrupted, PackageError, "package|zip|CRC|hash|sha"),
    "wrong-hash": (wrong_hash, PackageError, "SHA-256|sha256|hash"),
    "self-test": (failing_self_test, SelfTestFailed, "refusing the model"),
}


def test_no_model_is_a_clear_error() -> None:
    service = ModelService()
    assert service.model is None and service.snapshot() is None
    with pytest.raises(NoModel, match="no model"):
        service.predict(np.zeros((1, 64)))


@pytest.mark.parametrize("kind", list(BAD))
def test_refused_update_keeps_the_previous_model_serving(kind: str, tmp_path: Path) -> None:
    make, error, message = BAD[kind]
    x, y = _holdout()
    service = ModelService()
    good = service.replace(MLP_TFLITE)
    with pytest.raises(error, match=message):
        service.replace(make(tmp_path))
    assert service.model is good
    assert (service.predict(x).classes == y).mean() > 0.9


def test_load_does_not_activate_and_activate_returns_the_previous() -> None:
    service = ModelService(threads=2)
    first = service.replace(MLP)
    second = service.load(MLP_TFLITE)
    assert service.model is first
    assert service.activate(second) is first
    assert service.model is second and service.swaps == 2
    assert describe(second)["runtime"] == "tflite"


def test_a_served_model_keeps_no_model_file_and_one_self_test_vector() -> None:
    full = read_package(MLP).manifest
    model = ModelService().load(MLP)
    assert full.model_file not in model.package.members and model.package.manifest is model.manifest
    assert model.manifest.self_test.inputs == full.self_test.inputs[:1]
    assert model.manifest.self_test.expected == full.self_test.expected[:1]
    assert model.self_test.vectors == describe(model)["self_test_vectors"] == 30
    x, y = _holdout()
    assert (model.predict(x).classes == y).mean() > 0.9
    kept = Model.load(MLP)  # not served: the package as read
    assert kept.manifest == full and full.model_file in kept.package.members


def test_swaps_under_load_never_fail_a_prediction() -> None:
    x, y = _holdout()
    service = ModelService()
    models = [service.load(MLP), service.load(MLP_TFLITE)]
    service.activate(models[0])
    stop = threading.Event()
    failures: list[BaseException] = []
    scores: list[float] = []

    def worker() -> None:
        while not stop.is_set():
            try:
                scores.append(float((service.predict(x[:50]).classes == y[:50]).mean()))
            except BaseException as exc:  # any failure is the finding
                failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(200):
        service.activate(models[i % 2])
    stop.set()
    for t in threads:
        t.join()
    assert not failures and scores and min(scores) > 0.8


def test_predictions_feed_the_window() -> None:
    x, _ = _holdout()
    service = ModelService()
    service.replace(MLP)
    service.predict(x[:300])
    service.predict(x[0])
    with pytest.raises(ModelError):
        service.predict(np.zeros((2, 5)))
    window = service.snapshot()
    assert window is not None
    stats = window.inference
    assert (stats.model, stats.version) == ("digits", "1.0.0")
    assert stats.count == 302 and stats.errors == 1
    assert stats.latency is not None and 0 < stats.latency.p50_ms <= stats.latency.p99_ms
    assert sum(stats.class_counts.values()) == 301 and sum(stats.confidence_hist) == 301
    assert window.drift is not None and window.drift.samples == 301
    baseline = window.drift.score
    # A shifted input distribution (a dirty lens, a new sensor) makes PSI rise.
    service.predict(np.clip(x[:300] * 0.3 + 9.0, 0, 16))
    shifted = service.snapshot()
    assert shifted is not None and shifted.drift is not None
    assert shifted.drift.score > max(0.25, 3 * baseline)


def test_feedback_becomes_a_labelled_sample(tmp_path: Path) -> None:
    x, y = _holdout()
    store = SampleStore(tmp_path / "samples.db", max_samples=3)
    service = ModelService(samples=store, prediction_cache=4)
    service.replace(MLP)
    prediction, ids = service.predict_tracked(x[:6])
    assert len(set(ids)) == 6
    assert service.feedback(ids[-1], str(y[5])) == (prediction.classes[5] == y[5])
    assert service.feedback(ids[-2], int(y[4])) == (prediction.classes[4] == y[4])
    with pytest.raises(NotFound, match="unknown or expired"):
        service.feedback(ids[-1], "3")  # each id is used once
    with pytest.raises(NotFound):
        service.feedback(ids[0], "3")  # evicted from a cache of 4
    with pytest.raises(ModelError, match="unknown label"):
        service.feedback(ids[2], "cat")
    with pytest.raises(ModelError, match="out of range"):
        service.feedback(ids[2], 10)
    features, labels = store.dataset(64)
    np.testing.assert_array_equal(features, x[[5, 4]])
    assert labels.tolist() == [y[5], y[4]]
    window = service.snapshot()
    assert window is not None and window.inference.feedback_count == 2
    store.close()


def test_feedback_for_the_previous_model_is_not_credited_to_the_new_one(tmp_path: Path) -> None:
    """A rollout's accuracy gate reads the new version's feedback only."""
    x, y = _holdout()
    pkg = read_package(MLP)
    manifest = Manifest.model_validate({**pkg.manifest.model_dump(), "version": "1.1.0"})
    newer = tmp_path / "digits-1.1.0.efpkg"
    newer.write_bytes(pack_package(manifest, dict(pkg.members)))
    store = SampleStore(tmp_path / "samples.db", max_samples=10)
    service = ModelService(samples=store, prediction_cache=8)
    service.replace(MLP)
    _, old_ids = service.predict_tracked(x[:2])
    service.replace(newer)
    _, new_ids = service.predict_tracked(x[2:3])
    service.feedback(old_ids[0], int(y[0]))
    service.feedback(new_ids[0], int(y[2]))
    window = service.snapshot()
    assert window is not None and window.inference.feedback_count == 1
    assert store.dataset(64)[1].tolist() == [y[0], y[2]]  # both are still labelled samples
    store.close()
