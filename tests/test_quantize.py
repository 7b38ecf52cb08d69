"""Real ONNX int8: quantizing models written by other tools, and the checks that prove it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, quant_pre_process, quantize_static

from edgefleet_contract.errors import EdgefleetError, ModelError
from edgefleet_contract.package import Agreement, Quantization
from fleet_server.modelkit import quantize

SAMPLES = 256


def _const(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)


def multi_input_model(*, opset: int = 17) -> bytes:
    """Two inputs (an NCHW image and tabular features), two outputs (class probabilities
    and a two-value regression), one Conv, one Gemm with ``transB`` as torch writes dense
    layers, and a MatMul + Add that the pre-processing fuses into another Gemm."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["image", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["cr"]),
        helper.make_node("Flatten", ["cr"], ["cf"]),
        helper.make_node("Gemm", ["tab", "gw", "gb"], ["g"], transB=1, name="dense_tab"),
        helper.make_node("Relu", ["g"], ["gr"]),
        helper.make_node("Concat", ["cf", "gr"], ["joined"], axis=1),
        helper.make_node("MatMul", ["joined", "mw"], ["m"], name="head"),
        helper.make_node("Add", ["m", "mb"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["joined", "rw"], ["value"], name="regressor"),
    ]
    width = 4 * 8 * 8 + 16
    inits = [
        _const(rng, "cw", (4, 3, 3, 3)),
        _const(rng, "cb", (4,)),
        _const(rng, "gw", (16, 5)),
        _const(rng, "gb", (16,)),
        _const(rng, "mw", (width, 10)),
        _const(rng, "mb", (10,)),
        _const(rng, "rw", (width, 2)),
    ]
    graph = helper.make_graph(
        nodes,
        "multi",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 8, 8]),
            helper.make_tensor_value_info("tab", TensorProto.FLOAT, ["n", 5]),
        ],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 10]),
            helper.make_tensor_value_info("value", TensorProto.FLOAT, ["n", 2]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def calibration(n: int = SAMPLES, seed: int = 1) -> dict[str, npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(n, 3, 8, 8)).astype(np.float32),
        "tab": rng.normal(size=(n, 5)).astype(np.float32),
    }


@pytest.fixture(scope="module")
def float_model() -> bytes:
    return multi_input_model()


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_every_weight_op_of_a_multi_input_model_becomes_int8(
    float_model: bytes, mode: quantize.QuantizeMode
) -> None:
    before = quantize.float_weight_ops(float_model)
    assert sorted(s.split()[1] for s in before) == ["conv", "dense_tab", "head", "regressor"]
    int8 = quantize.quantize_onnx(float_model, calibration(), mode=mode)
    assert quantize.float_weight_ops(int8) == []
    counts = quantize.int8_op_counts(int8)
    assert sum(counts.values()) == 4 and counts["Conv"] == 1
    if mode == "static":  # the fused MatMul+Add and torch's Gemm are both int8 Gemms
        assert counts.get("Gemm", 0) >= 2
    assert len(int8) < 0.7 * len(float_model)
    found = quantize.agreement(float_model, int8, calibration(seed=2), top1_outputs=["probs"])
    assert found.samples == SAMPLES
    by_name = {o.name: o for o in found.outputs}
    assert by_name["value"].top1 is None  # a regression output has no top-1
    assert by_name["value"].max_abs_error > 0  # int8 really changed the numbers
    assert found.top1 is not None and found.top1 >= 0.95
    inputs = [i.name for i in ort.InferenceSession(int8).get_inputs()]
    assert inputs == ["image", "tab"]  # the file keeps its interface


def test_a_float_weight_behind_quantize_dequantize_still_counts_as_float() -> None:
    """Fake quantization (float initializer -> QuantizeLinear -> DequantizeLinear) stores
    float weights: the check follows the chain back to what is stored."""
    w = np.ones((4, 3), dtype=np.float32)
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"]),
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wdq"]),
        helper.make_node("MatMul", ["x", "wdq"], ["fake"], name="fake"),
        helper.make_node("DequantizeLinear", ["w8", "s", "z"], ["w8dq"]),
        helper.make_node("Transpose", ["w8dq"], ["w8t"], perm=[1, 0]),
        helper.make_node("MatMul", ["fake", "w8t"], ["real"], name="real"),
        helper.make_node("Constant", [], ["wc"], value=numpy_helper.from_array(w[:3, :3])),
        helper.make_node("MatMul", ["real", "wc"], ["const"], name="constant"),
        helper.make_node("MatMul", ["const", "const"], ["y"], name="activations"),
    ]
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.ones((3, 3), dtype=np.int8), "w8"),
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    graph = helper.make_graph(
        nodes,
        "fake",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)]
    ).SerializeToString()
    ops = {op.node: op for op in quantize.weight_ops(model)}
    assert sorted(ops) == ["constant", "fake", "real"]  # activation x activation is no weight
    assert not ops["fake"].int8 and ops["real"].int8 and not ops["constant"].int8
    assert quantize.float_weight_ops(model) == [
        "MatMul fake (float weight)",
        "MatMul constant (float weight)",
    ]


def old_recipe(float_model: bytes, feed: dict[str, npt.NDArray[np.float32]]) -> bytes:
    """The quantization the project shipped before: Gemm missing from the op types."""

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.feeds = iter([feed])

        def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / n for n in ("f.onnx", "p.onnx", "q.onnx"))
        src.write_bytes(float_model)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        ops = ["Conv", "MatMul", "Add", "Relu", "MaxPool", "Resize"]
        quantize_static(str(pre), str(out), Reader(), op_types_to_quantize=ops)
        return out.read_bytes()


def test_the_old_recipe_that_left_dense_layers_float_is_caught(float_model: bytes) -> None:
    """Quantizing without Gemm among the op types: the file "is" int8, its Gemms are not."""
    old = old_recipe(float_model, calibration(64))
    left = quantize.float_weight_ops(old)
    assert left and all(s.startswith("Gemm ") for s in left)
    assert quantize.int8_op_counts(old) == {"Conv": 1, "MatMul": 1}  # the unfused one


def test_a_fixed_batch_model_is_calibrated_in_its_own_batch_size() -> None:
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, alpha=0.5, name="fc")],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [_const(rng, "w", (3, 6))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    data = model.SerializeToString()
    x = {"x": rng.normal(size=(40, 6)).astype(np.float32)}
    assert len(quantize.calibration_feeds(data, x)) == 40
    modes: tuple[quantize.QuantizeMode, ...] = ("static", "dynamic")
    for mode in modes:
        int8 = quantize.quantize_onnx(data, x, mode=mode)
        assert quantize.float_weight_ops(int8) == []
        found = quantize.agreement(data, int8, x)
        assert found.outputs[0].mean_abs_error < 0.05, (mode, found)


def test_agreement_below_the_threshold_is_refused_and_recorded_above() -> None:
    ref = {"p": np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 25]}
    flipped = ref["p"].copy()
    flipped[:2] = flipped[:2, ::-1]
    found = quantize.compare_outputs(ref, {"p": flipped})
    assert found.top1 == 0.98 and found.outputs[0].max_abs_error == 1.0
    with pytest.raises(ModelError, match=r"'p' .* only 98.0% of 100 calibration samples"):
        quantize.require_agreement(found, 0.99)
    kept = quantize.require_agreement(found, 0.95)
    assert kept.min_top1 == 0.95 and kept.top1 == 0.98
    with pytest.raises(ModelError, match="NaN"):
        quantize.compare_outputs(ref, {"p": np.full_like(flipped, np.nan)})


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({"image": calibration()["image"]}, "no values for model input 'tab'"),
        ({**calibration(), "mask": np.zeros(3)}, "'mask', which is not an input"),
        ({**calibration(), "tab": np.zeros((SAMPLES, 6), np.float32)}, r"shape \[256, 6\]"),
        ({**calibration(), "tab": np.array([["a"] * 5] * SAMPLES)}, "is <U1"),
        ({**calibration(), "tab": np.full((SAMPLES, 5), np.nan, np.float32)}, "NaN"),
        ({**calibration(), "tab": np.zeros((3, 5), np.float32)}, "differ in sample count"),
        ([], "no calibration samples"),
    ],
)
def test_bad_calibration_is_refused_naming_the_input(
    float_model: bytes, feeds: quantize.Feeds, message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        quantize.quantize_onnx(float_model, feeds)


def test_unfit_models_are_refused_with_what_to_do(float_model: bytes) -> None:
    with pytest.raises(ModelError, match="not a readable ONNX file"):
        quantize.quantize_onnx(b"\x08\x01garbage", calibration())
    with pytest.raises(ModelError, match="needs calibration samples"):
        quantize.quantize_onnx(float_model)
    relu = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    plain = helper.make_model(relu, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match=r"no Conv, Gemm or MatMul.*float32") as caught:
        quantize.quantize_onnx(plain.SerializeToString(), {"x": np.ones((4, 3), np.float32)})
    assert isinstance(caught.value, EdgefleetError)


def test_quantization_facts_are_optional_and_consistent() -> None:
    """Packages written before the facts existed still validate; float ones carry none."""
    assert Quantization(dtype="int8", method="static-qdq").agreement is None
    record = Agreement.model_validate(
        {
            "samples": 10,
            "outputs": [{"name": "p", "top1": 1.0, "max_abs_error": 0.1, "mean_abs_error": 0.01}],
            "min_top1": 0.99,
        }
    )
    Quantization(dtype="int8", method="static-qdq", int8_ops={"Gemm": 2}, agreement=record)
    with pytest.raises(ValueError, match="float32 models record no"):
        Quantization(dtype="float32", method="none", agreement=record)
    with pytest.raises(ValueError, match="below the declared"):
        Agreement.model_validate(
            {
                **record.model_dump(),
                "min_top1": 1.0,
                "outputs": [{"name": "p", "top1": 0.5, "max_abs_error": 1, "mean_abs_error": 0.5}],
            }
        )


def torch_like_cnn() -> bytes:
    """The graph ``torch.onnx.export`` writes for a small CNN in eval mode: Conv without
    bias, BatchNormalization, ReLU, MaxPool, GlobalAveragePool, Flatten, a Linear as Gemm
    with ``transB``, and a named dynamic batch dimension."""
    rng = np.random.default_rng(5)

    def bn(i: int, channels: int) -> list[onnx.TensorProto]:
        return [
            numpy_helper.from_array(rng.uniform(0.5, 1.5, channels).astype(np.float32), f"g{i}"),
            numpy_helper.from_array(rng.normal(0, 0.1, channels).astype(np.float32), f"b{i}"),
            numpy_helper.from_array(rng.normal(0, 0.1, channels).astype(np.float32), f"m{i}"),
            numpy_helper.from_array(rng.uniform(0.5, 1.5, channels).astype(np.float32), f"v{i}"),
        ]

    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["c0"], pads=[1, 1, 1, 1], name="/conv1/Conv"),
        helper.make_node("BatchNormalization", ["c0", "g0", "b0", "m0", "v0"], ["n0"]),
        helper.make_node("Relu", ["n0"], ["r0"]),
        helper.make_node("MaxPool", ["r0"], ["p0"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p0", "w1"], ["c1"], pads=[1, 1, 1, 1], name="/conv2/Conv"),
        helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    inits = [
        _const(rng, "w0", (8, 1, 3, 3)),
        *bn(0, 8),
        _const(rng, "w1", (16, 8, 3, 3)),
        *bn(1, 16),
        _const(rng, "fc.weight", (4, 16)),
        _const(rng, "fc.bias", (4,)),
    ]
    graph = helper.make_graph(
        nodes,
        "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch_size", 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def test_a_torch_style_cnn_is_int8_everywhere_and_keeps_float_logits() -> None:
    model = torch_like_cnn()
    x = {"input": np.random.default_rng(6).normal(size=(300, 1, 16, 16)).astype(np.float32)}
    int8 = quantize.quantize_onnx(model, x)
    assert quantize.float_weight_ops(int8) == []
    assert quantize.int8_op_counts(int8) == {"Conv": 2, "Gemm": 1}  # BatchNorm folded
    graph = onnx.load_model_from_string(int8).graph
    producers = {o: n for n in graph.node for o in n.output}
    # The output the caller reads is not squeezed through an int8 grid.
    assert producers["logits"].op_type == "Identity"
    found = quantize.agreement(model, int8, x)
    assert found.top1 is not None and found.top1 >= 0.97
    logits = found.outputs[0]
    assert (
        0
        < logits.mean_abs_error
        < 0.05 * float(np.abs(quantize.run_onnx(model, x)["logits"]).mean())
    )


def test_quantize_checked_returns_the_file_and_its_manifest_record(float_model: bytes) -> None:
    int8, record = quantize.quantize_checked(
        float_model, calibration(), min_top1=0.9, top1_outputs=["probs"]
    )
    assert record.method == "static-qdq" and record.calibration_samples == SAMPLES
    assert record.int8_ops == quantize.int8_op_counts(int8) and record.per_channel
    assert record.agreement is not None and record.agreement.min_top1 == 0.9
    assert [o.name for o in record.agreement.outputs] == ["probs", "value"]
    _, dynamic = quantize.quantize_checked(float_model, calibration(), mode="dynamic", min_top1=0.9)
    assert dynamic.method == "dynamic-range" and dynamic.calibration_samples is None
    with pytest.raises(ModelError, match=r"need 100.0%\); calibrate on more representative"):
        quantize.quantize_checked(float_model, calibration(), min_top1=1.0)
