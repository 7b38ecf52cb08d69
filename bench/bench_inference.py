"""Inference: the agent's in-process predict against calling the runtime directly on the
same file in the same run (one row per call, 1 thread), and int8 against float32 on the
same runtime (latency of one row per call, the median of three alternating runs with the
worst beside it; model file size; accuracy and float-vs-int8 top-1 agreement on the
held-out digits split).  ONNX int8 is static QDQ with every Conv/Gemm/MatMul weight int8
(goal: int8 <= 0.8x float latency on the conv model, >= 99% top-1 agreement); TFLite
int8 is dynamic-range (int8 weights, float activations).

Two agent paths: ``Model.predict`` (validation, preprocessing, top-1, labels) and
``ModelService.predict``, what the daemon, the local API and embedding apps call, which
adds the telemetry recording (latency, confidence, class, drift row).  The direct
baseline gets the row already preprocessed and skips all of that, so the ratio is
everything the agent adds.  Target: at most 1.05x on the CNN (the realistic model);
the tiny MLP runs in a few µs, so a fixed ~10-20 µs of Python shows as a large ratio.
Timings alternate between the sides call by call and compare medians, so bursts of
machine load hit every side alike; each side has its own session or interpreter, so each
call follows another model instance's and none starts with its weights still in cache."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.runtime import Model
from agent.serving import ModelService

DIST = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models"
HOLDOUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "digits_holdout.npz"
SECONDS = 3.0


def _direct(model: Model, row: npt.NDArray[np.float32]) -> Callable[[], Any]:
    """The bare runtime call on its own session/interpreter, input prepared up front."""
    m = model.manifest
    x = m.preprocessing.apply(row)
    if m.runtime == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            model.package.model_bytes, options, providers=["CPUExecutionProvider"]
        )
        feeds, outputs = {m.inputs[0].name: x}, [m.outputs[0].name]
        return lambda: session.run(outputs, feeds)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model.package.model_bytes, num_threads=1)
    index = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(x.shape))
    interpreter.allocate_tensors()

    def call() -> Any:
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        return interpreter.get_tensor(out)

    return call


def _predictor(model: Model, row: npt.NDArray[np.float32]) -> Callable[[], Any]:
    return lambda: model.predict(row)


def _served(service: ModelService, row: npt.NDArray[np.float32]) -> Callable[[], Any]:
    return lambda: service.predict(row)


def _best_us(calls: list[Callable[[], Any]], seconds: float = SECONDS) -> list[float]:
    """Median microseconds per call of each callable, the sides alternating call by call.

    On a shared machine load comes and goes in bursts; alternating single calls puts
    each burst on every side alike, and the median ignores the calls it hit hardest.
    """
    for call in calls:  # warm up
        for _ in range(20):
            call()
    samples: list[list[int]] = [[] for _ in calls]
    clock = time.perf_counter_ns
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(50):
            for i, call in enumerate(calls):
                start = clock()
                call()
                samples[i].append(clock() - start)
    return [float(np.median(s)) / 1000 for s in samples]


def _path(name: str, flavor: str) -> Path:
    return DIST / f"{name}-1.0.0-{flavor}.efpkg"


def run() -> list[dict[str, object]]:
    data = np.load(HOLDOUT)
    x, y = data["x"].astype(np.float32), data["y"]
    row = x[:1]
    rows: list[dict[str, object]] = []
    models = {}
    for name in ("digits-cnn", "digits"):
        for flavor in ("onnx-float32", "tflite-float32", "onnx-int8", "tflite-int8"):
            models[name, flavor] = Model.load(_path(name, flavor), threads=1)
    for (name, flavor), model in models.items():
        # The service serves its own copy: sharing ``model``'s session would let every
        # service call start on the weights the Model.predict call just pulled into cache.
        service = ModelService(threads=1)
        service.activate(Model.load(_path(name, flavor), threads=1))
        direct, agent, served = _best_us(
            [_direct(model, row), _predictor(model, row), _served(service, row)]
        )
        for label, value in (("Model.predict", agent), ("ModelService.predict", served)):
            rows.append(
                {
                    "comparison": f"{label} / direct runtime",
                    "model": name,
                    "flavor": flavor,
                    "baseline": f"{direct:.1f} µs direct",
                    "measured": f"{value:.1f} µs agent",
                    "ratio": f"{value / direct:.3f}x",
                    "note": f"{value - direct:+.1f} µs per call",
                }
            )
    for name in ("digits-cnn", "digits"):
        for runtime in ("onnx", "tflite"):
            rows.append(_int8_row(name, runtime, models, x, y))
    return rows


def _int8_row(
    name: str,
    runtime: str,
    models: dict[tuple[str, str], Model],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
) -> dict[str, object]:
    """int8 against float32 on one runtime: latency in three alternating runs (median and
    worst ratio), model file sizes, held-out accuracy and top-1 agreement of the two."""
    f32, i8 = models[name, f"{runtime}-float32"], models[name, f"{runtime}-int8"]
    row = x[:1]
    runs = [_best_us([_predictor(f32, row), _predictor(i8, row)], SECONDS / 2) for _ in range(3)]
    ratios = sorted(b / a for a, b in runs)
    lat = [float(np.median([r[i] for r in runs])) for i in (0, 1)]
    predicted = [m.predict(x).classes for m in (f32, i8)]
    acc = [float((p == y).mean()) for p in predicted]
    agreement = float((predicted[0] == predicted[1]).mean())
    size = [len(m.package.model_bytes) / 1024 for m in (f32, i8)]
    return {
        "comparison": "int8 / float32 (same runtime)",
        "model": name,
        "flavor": runtime,
        "baseline": f"{lat[0]:.1f} µs, acc {acc[0]:.3f}, model {size[0]:.0f} KiB",
        "measured": f"{lat[1]:.1f} µs, acc {acc[1]:.3f}, model {size[1]:.0f} KiB",
        "ratio": f"{ratios[1]:.3f}x latency",
        "note": f"worst of 3 runs {ratios[-1]:.3f}x; top-1 agreement {agreement:.3f}; "
        f"accuracy {acc[1] - acc[0]:+.3f}; size {size[1] / size[0]:.2f}x",
    }
