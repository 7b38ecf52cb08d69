"""A full-integer TFLite file (int8 input and output) is served as it is: the agent maps
float rows onto the file's input grid and its int8 probabilities back, as the manifest says.

The file is written with the TFLite schema the way a converter writes full-integer
models: int8 activations with per-tensor scales, int8 weights, int32 bias, and an
int8 softmax (scale 1/256, zero point -128).  The expected outputs come from the
LiteRT interpreter fed by hand, not from the agent's own code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.interpreter import Interpreter

from agent.runtime import Model
from edgefleet_contract.drift import build_reference
from edgefleet_contract.errors import PackageError
from edgefleet_contract.package import (
    Lineage,
    Manifest,
    Preprocessing,
    Quantization,
    SelfTest,
    TensorQuantization,
    TensorSpec,
    pack_package,
    parse_package,
)
from fleet_server.modelkit.digits import LABELS, split
from fleet_server.modelkit.tflite_export import _finish, _Graph

PRE = Preprocessing(scale=1 / 16)
IN_Q = TensorQuantization(scale=1 / 255, zero_point=-128)
OUT_Q = TensorQuantization(scale=1 / 256, zero_point=-128)


def _quant(scale: float, zero: int) -> fb.QuantizationParametersT:
    q = fb.QuantizationParametersT()
    q.scale, q.zeroPoint = [scale], [zero]
    return q


def _centroid_classifier() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """A linear nearest-centroid classifier of the digits (preprocessed to [0, 1])."""
    data = split()
    x = data.x_train / 16
    means = np.stack([x[data.y_train == c].mean(axis=0) for c in range(10)])
    return (8 * means).astype(np.float32), (-4 * (means**2).sum(axis=1)).astype(np.float32)


def full_integer_tflite() -> bytes:
    w, b = _centroid_classifier()
    logits = np.asarray(split().x_train / 16, np.float32) @ w.T + b
    lo, hi = float(logits.min()), float(logits.max())
    logit_scale = (hi - lo) / 255
    logit_zero = round(-128 - lo / logit_scale)
    w_scale = float(np.abs(w).max()) / 127
    g = _Graph(int8_weights=True)
    first = g.tensor(
        "features", [-1, 64], dtype=fb.TensorType.INT8, quant=_quant(IN_Q.scale, IN_Q.zero_point)
    )
    weight = g.tensor(
        "w",
        [10, 64],
        data=np.clip(np.round(w / w_scale), -127, 127).astype(np.int8),
        dtype=fb.TensorType.INT8,
        quant=_quant(w_scale, 0),
    )
    bias_scale = IN_Q.scale * w_scale
    bias = g.tensor(
        "b",
        [10],
        data=np.round(b / bias_scale).astype(np.int32),
        dtype=fb.TensorType.INT32,
        quant=_quant(bias_scale, 0),
    )
    out = g.tensor(
        "logits", [-1, 10], dtype=fb.TensorType.INT8, quant=_quant(logit_scale, logit_zero)
    )
    g.op(
        fb.BuiltinOperator.FULLY_CONNECTED,
        [first, weight, bias],
        [out],
        fb.BuiltinOptions.FullyConnectedOptions,
        fb.FullyConnectedOptionsT(),
        version=4,
    )
    probs = g.tensor(
        "probabilities", [-1, 10], dtype=fb.TensorType.INT8, quant=_quant(OUT_Q.scale, -128)
    )
    softmax = fb.SoftmaxOptionsT()
    softmax.beta = 1.0
    g.op(
        fb.BuiltinOperator.SOFTMAX,
        [out],
        [probs],
        fb.BuiltinOptions.SoftmaxOptions,
        softmax,
        version=2,
    )
    return _finish(g, first, probs)


def _interpreter_probabilities(
    model: bytes, raw: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """What LiteRT itself computes, with the input quantized and output dequantized by hand."""
    interpreter = Interpreter(model_content=model)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    assert np.float32(scale) == np.float32(IN_Q.scale) and zero == IN_Q.zero_point
    # x / scale as a float32 multiply by 255 (a float64 divide breaks rounding ties
    # differently, one step on some pixels: both are within the grid's half step).
    x = np.asarray(raw, np.float32) / np.float32(16)
    q = np.clip(np.rint(x * np.float32(1 / IN_Q.scale)) + zero, -128, 127).astype(np.int8)
    interpreter.resize_tensor_input(inp["index"], list(q.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], q)
    interpreter.invoke()
    o_scale, o_zero = out["quantization"]
    result = interpreter.get_tensor(out["index"]).astype(np.float32)
    return np.asarray((result - o_zero) * o_scale, np.float32)


def _package(model: bytes, *, inputs: TensorSpec | None = None) -> bytes:
    data = split()
    picks = [int(np.flatnonzero(data.y_train == c)[0]) for c in range(10)]
    raw = data.x_train[picks].astype(np.float32)
    manifest = Manifest(
        name="digits-int8io",
        version="1.0.0",
        runtime="tflite",
        quantization=Quantization(dtype="int8", method="full-integer"),
        flavor="tflite-int8",
        model_file="model.tflite",
        inputs=[
            inputs or TensorSpec(name="features", shape=[-1, 64], dtype="int8", quantization=IN_Q)
        ],
        outputs=[
            TensorSpec(name="probabilities", shape=[-1, 10], dtype="int8", quantization=OUT_Q)
        ],
        preprocessing=PRE,
        labels=list(LABELS),
        self_test=SelfTest(
            inputs=raw.tolist(),
            expected=_interpreter_probabilities(model, raw).tolist(),
            atol=1e-6,
        ),
        drift=build_reference(data.x_train),
        lineage=Lineage(source="upload"),
        created_at=1.7e9,
    )
    return pack_package(manifest, {"model.tflite": model})


@pytest.fixture(scope="module")
def model_file() -> bytes:
    return full_integer_tflite()


def test_int8_input_and_output_are_mapped_as_the_file_declares(model_file: bytes) -> None:
    model = Model.from_package(parse_package(_package(model_file)))
    assert model.self_test.max_error == 0.0  # the agent feeds LiteRT exactly what it expects
    data = split()
    got = model.predict(data.x_test)
    # Dequantized int8 probabilities: multiples of 1/256 that still sum to about one.
    steps = got.probabilities * 256
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)
    assert np.abs(got.probabilities.sum(axis=1) - 1).max() < 0.05
    np.testing.assert_array_equal(
        got.probabilities, _interpreter_probabilities(model_file, data.x_test.astype(np.float32))
    )
    w, b = _centroid_classifier()
    float_top1 = (data.x_test / 16 @ w.T + b).argmax(axis=1)
    assert float((got.classes == float_top1).mean()) >= 0.97
    assert float((got.classes == data.y_test).mean()) > 0.85


def test_a_manifest_that_misstates_the_file_quantization_is_refused(model_file: bytes) -> None:
    wrong_scale = TensorSpec(
        name="features",
        shape=[-1, 64],
        dtype="int8",
        quantization=TensorQuantization(scale=1 / 127, zero_point=0),
    )
    with pytest.raises(PackageError, match=r"'features' is quantized with scale 0.00392.*repack"):
        Model.from_package(parse_package(_package(model_file, inputs=wrong_scale)))
    as_float = TensorSpec(name="features", shape=[-1, 64], dtype="float32")
    with pytest.raises(PackageError, match="'features' is int8 in the file, the manifest declares"):
        Model.from_package(parse_package(_package(model_file, inputs=as_float)))


def test_the_shipped_tflite_int8_packages_keep_float_io(tmp_path: Path) -> None:
    """Dynamic-range files (int8 weights, float activations) take and give floats."""
    root = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models"
    for path in sorted(root.glob("*-tflite-int8.efpkg")):
        model = Model.load(path)
        spec = model.manifest.inputs[0]
        assert spec.dtype == "float32" and model.manifest.quantization.method == "dynamic-range"
        assert model.self_test.top1_agreement == 1.0
