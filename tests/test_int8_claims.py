"""int8 that is checked, not claimed: the shipped packages, federated candidates, and the
registry refusing an "int8" package whose dense layers are float (REST and fleetctl)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet_contract.errors import PackageError
from edgefleet_contract.package import Manifest, ModelPackage, pack_package, read_package
from fleet_server.federation.candidate import HeldOutSet, finish_run
from fleet_server.federation.spec import RunSpec
from fleet_server.modelkit import Network, quantize
from fleet_server.modelkit.digits import split
from fleet_server.server import FleetServer

from .fleetctl_kit import fleetctl, login_admin
from .ota_server import MODELS, make_env
from .test_quantize import old_recipe

SHIPPED = sorted(MODELS.glob("*-onnx-int8.efpkg"))
FLOAT = MODELS / "digits-1.0.0-onnx-float32.efpkg"
INT8 = MODELS / "digits-1.0.0-onnx-int8.efpkg"


def _assert_really_int8(package: ModelPackage) -> None:
    q = package.manifest.quantization
    assert q.dtype == "int8" and q.method == "static-qdq" and q.per_channel
    assert quantize.float_weight_ops(package.model_bytes) == []
    counts = quantize.int8_op_counts(package.model_bytes)
    assert counts == q.int8_ops and counts.get("Gemm", 0) >= 2  # the dense layers too
    assert q.agreement is not None and q.agreement.min_top1 == quantize.DEFAULT_MIN_TOP1
    assert q.agreement.top1 is not None and q.agreement.top1 >= q.agreement.min_top1
    quantize.check_int8_claim(package)


def test_every_shipped_onnx_int8_package_holds_int8_weights() -> None:
    assert {p.name for p in SHIPPED} == {
        "digits-1.0.0-onnx-int8.efpkg",
        "digits-cnn-1.0.0-onnx-int8.efpkg",
    }
    for path in SHIPPED:
        package = read_package(path)
        _assert_really_int8(package)
        float_file = read_package(path.with_name(path.name.replace("int8", "float32")))
        assert len(package.model_bytes) < 0.7 * len(float_file.model_bytes)
    assert read_package(SHIPPED[1]).manifest.quantization.int8_ops == {"Conv": 4, "Gemm": 2}


def test_a_federated_candidate_int8_flavour_is_really_int8(tmp_path: Path) -> None:
    """The candidate path (finish_run) builds its int8 flavours through the same quantizer."""
    parent = read_package(FLOAT)
    network = Network.from_package(parent)
    tuned = network.with_weights({k: v * 1.02 for k, v in network.weights.items()})
    data = split()

    def heldout(_: str) -> HeldOutSet:
        return HeldOutSet(data.x_test, data.y_test, data.x_train[:600])

    result = finish_run(
        "run-int8",
        RunSpec(model="digits"),
        parent,
        tuned,
        heldout,
        rounds=[],
        out_dir=tmp_path / "candidates" / "run-int8",
        on_candidate=None,
    )
    files = [Path(str(f)) for f in result["files"]]  # type: ignore[attr-defined]
    int8 = [read_package(f) for f in files if f.name.endswith("-onnx-int8.efpkg")]
    assert len(int8) == 1 and int8[0].manifest.version == "1.1.0"
    _assert_really_int8(int8[0])
    assert int8[0].manifest.quantization.calibration_samples == 600
    # The recorded agreement is what the file really does against the float network.
    x = parent.manifest.preprocessing.apply(data.x_train[:600])
    produced = quantize.run_onnx(int8[0].model_bytes, {"features": x})["probabilities"]
    top1 = float((produced.argmax(axis=1) == tuned.forward(x).argmax(axis=1)).mean())
    assert int8[0].manifest.quantization.agreement.top1 == pytest.approx(top1)  # type: ignore[union-attr]


def _repacked(out: Path, model: bytes, version: str, **quantization: object) -> Path:
    """The shipped int8 package with another model file and quantization record."""
    pkg = read_package(INT8)
    doc = pkg.manifest.model_dump()
    doc["quantization"] = {"dtype": "int8", "method": "static-qdq", **quantization}
    manifest = Manifest.model_validate({**doc, "version": version})
    path = out / f"digits-{version}-onnx-int8.efpkg"
    path.write_bytes(pack_package(manifest, {**pkg.members, "model.onnx": model}))
    return path


@pytest.fixture
def fake_int8(tmp_path: Path) -> Path:
    """An "int8" package as the old recipe made them: QDQ file, float dense weights."""
    x = read_package(FLOAT).manifest.preprocessing.apply(split().x_train[:200])
    old = old_recipe(read_package(FLOAT).model_bytes, {"features": x})
    assert quantize.float_weight_ops(old)  # the bug this guards against, reproduced
    return _repacked(tmp_path, old, "1.5.0", calibration_samples=200)


def test_the_registry_refuses_a_fake_int8_package_over_rest(
    tmp_path: Path, fake_int8: Path
) -> None:
    env = make_env(tmp_path)
    operator = env.login("olga")
    r = env.push("model", fake_int8, operator)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "declares int8, but 2 of its Conv/Gemm/MatMul weights are stored float" in detail
    assert "Gemm" in detail and "--quantize int8" in detail
    # The facts a manifest records must be what the file holds.
    real = read_package(INT8).model_bytes
    lying = _repacked(tmp_path, real, "1.6.0", int8_ops={"Gemm": 2, "Conv": 1})
    r = env.push("model", lying, operator)
    assert r.status_code == 400 and "records int8 ops" in r.json()["detail"]
    assert env.client.get("/api/v1/artifacts", headers=operator).json()["total"] == 0
    # An older package without the recorded facts, whose weights really are int8, is fine.
    honest = _repacked(tmp_path, real, "1.7.0")
    assert env.push("model", honest, operator).status_code == 201
    assert env.push("model", INT8, operator).status_code == 201
    assert not list((env.data_dir / "artifacts" / "tmp").iterdir())  # nothing half-stored


def test_fleetctl_push_of_a_fake_int8_package_is_refused(
    fleet: FleetServer, fleetctl_config: Path, fake_int8: Path
) -> None:
    login_admin(fleet.settings.api_url)
    code, _, err = fleetctl(["models", "push", str(fake_int8)])
    assert code != 0 and "Traceback" not in err
    assert "declares int8" in err and "stored float" in err
    code, _, err = fleetctl(["models", "push", str(INT8)])
    assert code == 0, err
    with pytest.raises(PackageError, match="stored float"):
        fleet.artifacts.add_model(fake_int8, lineage={"source": "federated"}, actor="fl")
