"""Inference: the agent's ``Model.predict`` against calling the runtime directly on the same
file in the same run (one row per call, 1 thread), and int8 against float32 on the same
runtime (latency of one row per call; accuracy on the held-out digits split).

The direct baseline gets the row already preprocessed and skips validation, top-1 and
labels, so the ratio is everything the agent adds.  Timings alternate between the two
sides in short blocks and keep each side's best block, so drift in machine load hits
both alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.runtime import Model
from fleet_server.modelkit.build import apply_preprocessing

from ._lab import table

DIST = Path(__file__).resolve().parent.parent / "models" / "dist"
HOLDOUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "digits_holdout.npz"
BLOCKS = 15
BLOCK_SECONDS = 0.1


def _direct(model: Model, row: npt.NDArray[np.float32]) -> Callable[[], Any]:
    """The bare runtime call on its own session/interpreter, input prepared up front."""
    m = model.manifest
    x = apply_preprocessing(row, m.preprocessing)
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


def _best_us(calls: list[Callable[[], Any]]) -> list[float]:
    """Per-call microseconds of each callable: best block mean, blocks interleaved."""
    for call in calls:  # warm up and size the blocks
        call()
    sizes = []
    for call in calls:
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < BLOCK_SECONDS / 2:
            call()
            n += 1
        sizes.append(max(2 * n, 10))
    best = [float("inf")] * len(calls)
    for _ in range(BLOCKS):
        for i, call in enumerate(calls):
            start = time.perf_counter_ns()
            for _ in range(sizes[i]):
                call()
            best[i] = min(best[i], (time.perf_counter_ns() - start) / sizes[i] / 1000)
    return best


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
        direct, agent = _best_us([_direct(model, row), _predictor(model, row)])
        rows.append(
            {
                "comparison": "agent predict / direct runtime",
                "model": name,
                "flavor": flavor,
                "baseline": f"{direct:.1f} µs direct",
                "measured": f"{agent:.1f} µs agent",
                "ratio": f"{agent / direct:.3f}x",
                "note": f"+{agent - direct:.1f} µs per call",
            }
        )
    for name in ("digits-cnn", "digits"):
        for runtime in ("onnx", "tflite"):
            f32, i8 = models[name, f"{runtime}-float32"], models[name, f"{runtime}-int8"]
            lat = _best_us([_predictor(f32, row), _predictor(i8, row)])
            acc = [float((m.predict(x).classes == y).mean()) for m in (f32, i8)]
            size = [m.package.size / 1024 for m in (f32, i8)]
            rows.append(
                {
                    "comparison": "int8 / float32 (same runtime)",
                    "model": name,
                    "flavor": runtime,
                    "baseline": f"{lat[0]:.1f} µs, acc {acc[0]:.3f}, {size[0]:.0f} KiB",
                    "measured": f"{lat[1]:.1f} µs, acc {acc[1]:.3f}, {size[1]:.0f} KiB",
                    "ratio": f"{lat[1] / lat[0]:.3f}x latency",
                    "note": f"accuracy {acc[1] - acc[0]:+.3f}",
                }
            )
    return rows


if __name__ == "__main__":
    print(table(run()))
