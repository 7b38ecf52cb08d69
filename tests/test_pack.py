"""``fleetctl models pack`` on models other tools wrote, and every bad input it must refuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from agent.runtime import Model
from agent.serving import ModelService, describe
from edgefleet_contract.errors import InputRejected, PackageError
from edgefleet_contract.package import read_package
from fleet_server.modelkit.pack import PackRequest, pack

from .fleetctl_kit import fleetctl
from .thirdparty_kit import (
    CNN,
    CNN_IMAGES,
    IFOREST,
    IFOREST_SPEC,
    SENSOR_CSV,
    audio,
    classifier_request,
    cli_pack,
    cnn_request,
    digits_truth,
    iforest_request,
    pack_args,
    two_input_package,
    vad_request,
    write,
)

# Every test runs fleetctl against its own config file, never the developer's.
pytestmark = pytest.mark.usefixtures("fleetctl_config")


def test_cli_packs_a_torch_cnn_that_serves_images_as_trained(tmp_path: Path) -> None:
    out = tmp_path / "cnn.efpkg"
    code, stdout, err = fleetctl(["models", "pack", *pack_args(cnn_request(tmp_path, output=out))])
    assert code == 0, err
    assert f"wrote {out}" in stdout and "task: classification" in stdout
    m = read_package(out).manifest
    assert m.format == 2 and m.task is not None and m.task.kind == "classification"
    assert m.task.scores == "logits"  # read from the model's outputs, not declared
    assert [(t.name, t.shape) for t in m.inputs] == [("image", [-1, 3, 16, 16])]
    assert len(m.drift.features) == 6  # per-channel mean and std of the images
    model = Model.load(out)
    images = np.load(CNN_IMAGES)
    predicted = model.predict(images).classes
    assert (predicted == digits_truth()).mean() > 0.9
    # An image of another size and colour is resized and converted by the same declaration.
    big_gray = np.kron(images[0, :, :, 0], np.ones((3, 3), dtype=np.uint8))
    assert model.infer(big_gray).results[0]["class_id"] == int(predicted[0])
    code, shown, _ = fleetctl(["models", "show", str(out)])
    assert code == 0 and "image  float32[-1, 3, 16, 16]" in shown and "layout" in shown


def test_sklearn_isolation_forest_packs_as_an_anomaly_detector(tmp_path: Path) -> None:
    package, path = pack(iforest_request(tmp_path, output=tmp_path / "a.efpkg"))
    task = package.manifest.task
    assert task is not None and task.kind == "anomaly" and task.reference_quantile == 0.98
    service = ModelService()
    served = service.replace(path)
    # the task runner reads the served manifest, which keeps one self-test vector
    assert served.runner is not None and served.runner.manifest is served.manifest
    assert len(served.manifest.self_test.inputs) == 1
    assert describe(served)["self_test_vectors"] == len(package.manifest.self_test.inputs) > 1
    normal = np.array([[55.0, 2.5, 4.0, 3.5]], dtype=np.float32)
    broken = np.array([[120.0, 25.0, 30.0, 0.1]], dtype=np.float32)
    result, _ = service.infer(np.concatenate([normal, broken]))
    assert [r["anomaly"] for r in result.results] == [False, True]
    window = service.snapshot()
    assert window is not None and window.inference.count == 2
    assert window.inference.class_counts == {} and window.inference.latency is not None
    assert sum(window.inference.confidence_hist) == 0  # no classes, no confidence


def test_sklearn_classifier_with_csv_columns_found_by_type(tmp_path: Path) -> None:
    package, path = pack(classifier_request(tmp_path, output=tmp_path / "c.efpkg"))
    task = package.manifest.task
    assert task is not None and task.kind == "classification"
    assert task.output == "probabilities" and task.scores == "probabilities"
    model = Model.load(path)
    assert model.predict([[75.0, 6.0, 9.0, 3.0]]).labels == ("overload",)


def test_silero_vad_from_its_wheel_streams_with_state_per_session(tmp_path: Path) -> None:
    package, path = pack(vad_request(tmp_path, output=tmp_path / "vad.efpkg"))
    m = package.manifest
    assert m.task is not None and m.task.stateful
    assert [(t.name, t.dtype, t.shape) for t in m.inputs] == [
        ("input", "float32", [1, 512]),
        ("state", "float32", [2, 1, 128]),
        ("sr", "int64", []),
    ]
    service = ModelService()
    service.replace(path)
    chunks = audio()[: 62 * 512].reshape(-1, 512)
    session, streamed = None, []
    for chunk in chunks:
        result, session = service.infer(chunk, session)
        streamed.append(result.results[0]["values"]["output"][0])
    fresh = [service.infer(chunk)[0].results[0]["values"]["output"][0] for chunk in chunks[-5:]]
    assert session is not None
    assert streamed[-5:] != pytest.approx(fresh)  # the state carried across calls matters
    assert all(0.0 <= p <= 1.0 for p in streamed)


# ------------------------------------------------------------------ refusals ----


def _onnx_file(folder: Path, node: onnx.NodeProto, opsets: dict[str, int]) -> Path:
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()]
    )
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _refused(tmp_path: Path, match: str, **kwargs: object) -> None:
    out = tmp_path / "out.efpkg"
    request = PackRequest(**{"name": "m", "version": "1.0.0", "output": out, **kwargs})  # type: ignore[arg-type]
    with pytest.raises(PackageError, match=match):
        pack(request)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_each_bad_input_is_refused_naming_the_thing_and_leaving_no_file(tmp_path: Path) -> None:
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).random((20, 4), dtype=np.float32))
    exotic = _onnx_file(
        tmp_path,
        helper.make_node("Frobnicate", ["x"], ["y"], domain="com.acme"),
        {"": 17, "com.acme": 1},
    )
    _refused(
        tmp_path,
        r"op Frobnicate \(com.acme opset 1.*onnxruntime \d",
        model=exotic,
        calibration=calib,
    )
    nan = _onnx_file(tmp_path, helper.make_node("Log", ["x"], ["y"]), {"": 17})
    negative = tmp_path / "negative.npy"
    np.save(negative, -np.ones((8, 4), dtype=np.float32))
    _refused(
        tmp_path,
        r"output 'y' is NaN or infinite on calibration sample 0",
        model=nan,
        calibration=negative,
    )
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.ones((8, 5), dtype=np.float32))
    _refused(tmp_path, r"does not fit input 'x'.*shape \(n, 4\)", model=nan, calibration=wrong)
    text = tmp_path / "text.npy"
    np.save(text, np.array(["a", "b"]))
    _refused(tmp_path, r"holds <U1, not numbers", model=nan, calibration=text)
    labels = write(tmp_path, "labels.txt", "a\nb\nc\n")
    _refused(
        tmp_path,
        r"3 labels given, but output 'y' has 4 classes",
        model=nan,
        calibration=calib,
        labels=labels,
        task="classification",
    )
    spec = write(tmp_path, "s.toml", "[inputs.pixels]\nshape = [1, 4]\n")
    _refused(
        tmp_path,
        r"names input 'pixels', which the model does not have; its inputs are \['x'\]",
        model=nan,
        calibration=calib,
        spec=spec,
    )
    typo = write(tmp_path, "typo.toml", "[taks]\nkind = 'regression'\n")
    _refused(tmp_path, r"spec file .*taks: Extra inputs", model=nan, calibration=calib, spec=typo)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(CNN.read_bytes()[:5000])
    _refused(
        tmp_path,
        r"truncated.onnx is not a readable ONNX file.*corrupt or truncated",
        model=truncated,
        calibration=calib,
    )
    _refused(
        tmp_path,
        r"m.onnx is \d+ bytes, over the 50 byte limit",
        model=nan,
        calibration=calib,
        max_bytes=50,
    )
    _refused(tmp_path, r"give --calibration samples", model=nan)


def test_push_of_a_raw_model_file_answers_with_the_pack_command(tmp_path: Path) -> None:
    code, _, err = fleetctl(["models", "push", str(IFOREST)])
    assert code == 1 and "fleetctl models pack" in err and "sensor-iforest" in err


def test_json_summary_of_pack_names_every_tensor(tmp_path: Path) -> None:
    request = iforest_request(tmp_path, name="pump", version="2.0.0", output=tmp_path / "p.efpkg")
    code, out, err = fleetctl(["--json", "models", "pack", *pack_args(request)])
    assert code == 0, err
    doc = json.loads(out)
    assert [t["name"] for t in doc["outputs"]] == ["label", "scores"]
    assert doc["task"]["kind"] == "anomaly" and doc["inputs"][0]["preprocessing"]["features"]


def test_a_multi_input_model_needs_its_inputs_by_name(tmp_path: Path) -> None:
    path = two_input_package(tmp_path)
    m = Model.load(path)
    out = m.infer({"a": [[1, 2, 3]], "b": [[4, 5, 6]]})
    assert out.results[0]["values"] == {"sum": [5, 7, 9], "prod": [4, 10, 18]}
    with pytest.raises(InputRejected, match=r"takes the inputs \['a', 'b'\]; missing: \['b'\]"):
        m.infer({"a": [[1, 2, 3]]})
    with pytest.raises(InputRejected, match="has several inputs; send them by name"):
        m.infer([[1, 2, 3]])
    with pytest.raises(InputRejected, match=r"regression model with 2 data input\(s\)"):
        m.predict([[1, 2, 3]])


def test_int8_packs_hold_int8_weights_and_record_their_agreement(tmp_path: Path) -> None:
    from fleet_server.modelkit import quantize

    out = tmp_path / "cnn-int8.efpkg"
    package = cli_pack(cnn_request(tmp_path, quantize="int8", output=out))
    q = package.manifest.quantization
    assert q.dtype == "int8" and q.method == "static-qdq" and q.int8_ops == {"Conv": 2, "Gemm": 2}
    assert q.agreement is not None and q.agreement.top1 is not None and q.agreement.top1 >= 0.99
    assert quantize.float_weight_ops(package.model_bytes) == []
    assert package.size < (CNN.stat().st_size + 70_000) * 0.75  # int8 weights, not float
    model = Model.load(out)
    assert (model.predict(np.load(CNN_IMAGES)).classes == digits_truth()).mean() > 0.9
    _refused(
        tmp_path,
        r"int8 quantization: the model has no Conv, Gemm or MatMul",
        model=IFOREST,
        calibration=SENSOR_CSV,
        task="anomaly",
        quantize="int8",
        spec=write(tmp_path, "i.toml", IFOREST_SPEC),
    )


@pytest.mark.parametrize("flavor", ["tflite-float32", "tflite-int8"])
def test_tflite_files_are_packed_as_their_converter_wrote_them(tmp_path: Path, flavor: str) -> None:
    source = read_package(
        Path(__file__).resolve().parent.parent
        / "fleet_server"
        / "factory_models"
        / f"digits-1.0.0-{flavor}.efpkg"
    )
    model = tmp_path / "digits.tflite"
    model.write_bytes(source.model_bytes)
    holdout = np.load(Path(__file__).resolve().parent / "data" / "digits_holdout.npz")
    calib = tmp_path / "x.npy"
    np.save(calib, holdout["x"][:200])
    spec = write(tmp_path, "d.toml", "[inputs.features.preprocessing]\nscale = 0.0625\n")
    labels = write(tmp_path, "l.txt", "\n".join(map(str, range(10))))
    package, path = pack(
        PackRequest(
            model=model,
            name="d",
            version="1.0.0",
            labels=labels,
            calibration=calib,
            spec=spec,
            output=tmp_path / "d.efpkg",
        )
    )
    m = package.manifest
    assert m.flavor == flavor and m.runtime == "tflite"
    assert m.quantization.method == ("dynamic-range" if flavor.endswith("int8") else "none")
    served = Model.load(path).predict(holdout["x"]).classes
    assert (served == holdout["y"]).mean() > 0.9
    if flavor == "tflite-float32":
        _refused(
            tmp_path,
            r"--quantize int8 does not apply to TFLite files",
            model=model,
            calibration=calib,
            labels=labels,
            spec=spec,
            quantize="int8",
        )


def test_answers_of_a_packed_classifier_take_feedback(tmp_path: Path) -> None:
    _, path = pack(classifier_request(tmp_path, output=tmp_path / "c.efpkg"))
    service = ModelService()
    service.replace(path)
    result, _ = service.infer([[75.0, 6.0, 9.0, 3.0], [35.0, 0.5, 0.2, 1.0]])
    first, second = result.results
    assert first["label"] == "overload" and service.feedback(first["id"], "overload") is True
    assert service.feedback(second["id"], "overload") is False
    window = service.snapshot()
    assert window is not None and window.inference.feedback_count == 2
    assert window.inference.feedback_correct == 1


def test_one_image_is_answered_as_the_batch_answers_it(tmp_path: Path) -> None:
    """A single sample's answer is worked out in Python floats, a batch's in numpy: the
    same class, the same probabilities to float32 precision; an id that takes feedback
    (the model trains on nothing, so no row is kept); non-finite logits go the numpy way."""
    _, path = pack(cnn_request(tmp_path, output=tmp_path / "cnn.efpkg"))
    service = ModelService()
    model = service.replace(path)
    images = np.load(CNN_IMAGES)[:8]
    batch = service.infer(images)[0].results
    for image, want in zip(images, batch, strict=True):
        (got,) = service.infer(image)[0].results
        assert got["class_id"] == want["class_id"] and got["label"] == want["label"]
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-5)
        assert got["confidence"] == max(got["probabilities"])
        assert abs(sum(got["probabilities"]) - 1) < 1e-9
        assert got["id"] != want["id"] and len(got["id"]) == 16
    assert service.feedback(got["id"], got["label"]) is True
    assert model.runner is not None
    logits = np.zeros((1, 10), np.float32)
    logits[0, 4] = np.nan
    model.runner._run = lambda feeds: {"logits": logits}
    (odd,) = service.infer(images[0])[0].results
    assert np.isnan(odd["probabilities"]).all() and odd["class_id"] == 0  # as numpy answers


def _integer_io_tflite(path: Path, w: np.ndarray, b: np.ndarray) -> None:
    """A full-integer-style TFLite file: int8 input and output tensors with their own scale
    and zero point around a float softmax classifier, as converters write integer I/O."""
    from ai_edge_litert import schema_py_generated as fb

    from fleet_server.modelkit.tflite_export import _finish, _Graph

    def quant(scale: float, zero: int) -> object:
        q = fb.QuantizationParametersT()
        q.scale, q.zeroPoint = [scale], [zero]
        return q

    g = _Graph(False)
    first = g.tensor("pixels", [-1, 4], dtype=fb.TensorType.INT8, quant=quant(0.5, -10))
    real = g.tensor("real", [-1, 4])
    g.op(fb.BuiltinOperator.DEQUANTIZE, [first], [real])
    weight = g.tensor("w", [3, 4], data=np.ascontiguousarray(w.T, dtype=np.float32))
    bias = g.tensor("b", [3], data=b.astype(np.float32))
    logits = g.tensor("logits", [-1, 3])
    g.op(
        fb.BuiltinOperator.FULLY_CONNECTED,
        [real, weight, bias],
        [logits],
        fb.BuiltinOptions.FullyConnectedOptions,
        fb.FullyConnectedOptionsT(),
    )
    probs = g.tensor("probs", [-1, 3])
    soft = fb.SoftmaxOptionsT()
    soft.beta = 1.0
    g.op(fb.BuiltinOperator.SOFTMAX, [logits], [probs], fb.BuiltinOptions.SoftmaxOptions, soft)
    out = g.tensor("classes", [-1, 3], dtype=fb.TensorType.INT8, quant=quant(1 / 256, -128))
    g.op(fb.BuiltinOperator.QUANTIZE, [probs], [out])
    path.write_bytes(_finish(g, first, out))


def test_a_tflite_file_with_integer_io_keeps_its_own_quantization(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    w, b = rng.normal(size=(4, 3)).astype(np.float32), np.zeros(3, np.float32)
    model = tmp_path / "int.tflite"
    _integer_io_tflite(model, w, b)
    x = rng.uniform(-4, 4, size=(64, 4)).astype(np.float32)
    calib = tmp_path / "x.npy"
    np.save(calib, x)
    labels = write(tmp_path, "l.txt", "a\nb\nc\n")
    package, path = pack(
        PackRequest(
            model=model,
            name="int",
            version="1.0.0",
            labels=labels,
            calibration=calib,
            output=tmp_path / "i.efpkg",
        )
    )
    m = package.manifest
    (spec,) = m.inputs
    assert spec.dtype == "int8" and spec.quantization is not None
    assert (spec.quantization.scale, spec.quantization.zero_point) == (0.5, -10)
    assert m.outputs[0].quantization is not None and m.outputs[0].quantization.zero_point == -128
    assert m.task is not None and m.task.kind == "classification"
    assert m.task.scores == "probabilities"  # dequantized outputs read as probabilities
    assert m.quantization.dtype == "float32"  # integer I/O around float weights
    served = Model.load(path).predict(x)
    q = np.clip(np.rint(x / 0.5) - 10, -128, 127)
    logits = ((q + 10) * 0.5) @ w + b
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.abs(served.probabilities - expected).max() < 1 / 128
    assert (served.classes == expected.argmax(axis=1)).mean() > 0.95


def test_pack_output_file_and_the_output_format_live_side_by_side() -> None:
    from fleet_server.fleetctl.output import extract_format

    rest, fmt = extract_format(["models", "pack", "m.onnx", "--output", "m.efpkg", "-o", "json"])
    assert rest == ["models", "pack", "m.onnx", "--output", "m.efpkg"] and fmt == "json"
    rest, fmt = extract_format(["devices", "list", "--output", "yaml"])
    assert rest == ["devices", "list"] and fmt == "yaml"
    assert extract_format(["models", "pack", "--output=m.efpkg"]) == (
        ["models", "pack", "--output=m.efpkg"],
        None,
    )
