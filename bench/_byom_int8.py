"""int8 against float on ONNX Runtime for the bring-your-own-model bench: the packer's int8
of the torch ResNet, and the torch CNN quantized every way ONNX Runtime offers."""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtime import Model
from models.thirdparty import RESNET_SIZE, digits_images
from tests.thirdparty_kit import resnet_images

from .bench_inference import _best_us

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def _session(model: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _paired(label: str, base: Any, other: Any, feed: dict[str, Any]) -> dict[str, object]:
    """``other`` against ``base`` on one feed: three runs of alternating calls, the median
    ratio shown with the worst beside it."""
    runs = [
        _best_us([partial(base.run, None, feed), partial(other.run, None, feed)], 1.5)
        for _ in range(3)
    ]
    ratios = sorted(i / f for f, i in runs)
    return {
        "measure": label,
        "value": f"{np.median([i for _, i in runs]):.1f} µs",
        "baseline": f"{np.median([f for f, _ in runs]):.1f} µs float32",
        "ratio": f"{ratios[1]:.2f}x (worst {ratios[-1]:.2f}x)",
    }


def resnet_int8(float_package: Path, int8_package: Path) -> list[dict[str, object]]:
    """The ResNet's int8 against float: top-1 agreement on the 1500 digits it was not
    calibrated on (each package's own preprocessing), and latency at batch 1 of the
    packer's int8 file against the float one on prepared tensors."""
    base, int8 = Model.load(float_package), Model.load(int8_package)
    others = digits_images(RESNET_SIZE)[0][:1500]
    agree = float(
        np.mean(
            [
                base.predict(chunk).classes == int8.predict(chunk).classes
                for chunk in np.split(others, 15)
            ]
        )
    )
    assert base.runner is not None
    feed = base.runner.feeds(resnet_images()[0])[0]
    return [
        {
            "measure": "torch ResNet int8 vs float32, top-1 agreement, 1500 uncalibrated images",
            "value": f"{agree:.1%}",
            "baseline": "goal >= 99%",
            "ratio": f"{agree / 0.99:.3f}x of goal",
        },
        _paired(
            "torch ResNet int8 / float32, the packer's int8 (uint8 activations), batch 1",
            _session(base.package.model_bytes),
            _session(int8.package.model_bytes),
            feed,
        ),
    ]


def int8_variants(float_package: Path) -> list[dict[str, object]]:
    """Why the torch CNN is slower in int8: the same float model quantized the ways ONNX
    Runtime offers, each against float on prepared tensors (three alternating runs, median
    and worst), and the packer's recipe at a batch of 64 (so per-call costs cannot be what
    makes it slower)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    model = Model.load(float_package)
    assert model.runner is not None
    feeds = [model.runner.feeds(im)[0] for im in np.load(DATA / "digits_images.npy")[:200]]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

    folder = Path(tempfile.mkdtemp(prefix="edgefleet-int8-"))
    (folder / "float.onnx").write_bytes(model.package.model_bytes)
    prepared = folder / "prepared.onnx"
    quant_pre_process(str(folder / "float.onnx"), str(prepared), skip_symbolic_shape=True)
    convs = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
    s8, u8 = QuantType.QInt8, QuantType.QUInt8
    variants: list[tuple[str, dict[str, Any]]] = [
        ("QDQ, uint8 activations, per-channel (the packer's)", {"activation_type": u8}),
        ("QDQ, int8 activations, per-channel", {"activation_type": s8}),
        ("QDQ, uint8 activations, per-tensor", {"activation_type": u8, "per_channel": False}),
        (
            "QOperator, uint8 activations, per-channel",
            {"activation_type": u8, "quant_format": QuantFormat.QOperator},
        ),
        (
            "QDQ, first Conv (3 input channels) left float",
            {"activation_type": u8, "nodes_to_exclude": convs[:1]},
        ),
        (
            "QDQ, both Convs left float (Gemm int8)",
            {"activation_type": u8, "nodes_to_exclude": convs},
        ),
    ]
    base = _session(prepared.read_bytes())
    name = next(iter(feeds[0]))
    rows: list[dict[str, object]] = []
    for k, (label, options) in enumerate(variants):
        out = folder / f"{k}.onnx"
        kw = {"quant_format": QuantFormat.QDQ, "per_channel": True, **options}
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            weight_type=s8,
            reduce_range=True,  # 7-bit weights, as the packer makes them
            op_types_to_quantize=["Conv", "Gemm", "MatMul"],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            **kw,
        )
        int8 = _session(out.read_bytes())
        for n in (1, 64) if k == 0 else (1,):
            feed = {name: np.concatenate([f[name] for f in feeds[:n]])}
            rows.append(_paired(f"torch CNN int8 / float32, {label}, batch {n}", base, int8, feed))
    return rows
