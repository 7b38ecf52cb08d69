"""Running the user's model on calibration samples, as the packer must before it packs.

Self-test vectors, the drift reference, an anomaly threshold and output shapes
the file leaves open all come from running the very file that ships, on this
machine's runtime, fed through :func:`~edgefleet_contract.preprocess.to_tensor`
(the device's own preprocessing).  A stateful model is run as a stream: each
call's state is the previous call's state output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet_contract.errors import InputRejected, PackageError
from edgefleet_contract.package import TensorSpec
from edgefleet_contract.preprocess import to_tensor
from edgefleet_contract.task import InputRole

Arrays = dict[str, npt.NDArray[Any]]
BATCH = 64


@dataclass(frozen=True)
class Run:
    """Per call: the fed (raw data and state) inputs and every output, float."""

    fed: list[Arrays]
    outputs: list[Arrays]
    feeds: list[Arrays]
    """The tensors of each ``session.run`` (preprocessed, every input): what int8
    calibration and the float-vs-int8 comparison run on."""


class Session:
    """The raw runtime on this machine: ONNX Runtime or a LiteRT interpreter."""

    def __init__(self, runtime: str, model: bytes, outputs: Sequence[str]) -> None:
        self.runtime, self.outputs = runtime, list(outputs)
        if runtime == "onnx":
            import onnxruntime as ort

            self._ort = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        else:
            from ai_edge_litert.interpreter import Interpreter

            self._tfl = Interpreter(model_content=model)
            self._in = {d["name"]: d for d in self._tfl.get_input_details()}
            self._out = {d["name"]: d for d in self._tfl.get_output_details()}

    def run(self, feeds: Arrays) -> Arrays:
        try:
            if self.runtime == "onnx":
                values = self._ort.run(self.outputs, feeds)
                return {n: np.asarray(v) for n, v in zip(self.outputs, values, strict=True)}
            return self._run_tflite(feeds)
        except Exception as exc:  # the runtimes raise their own types
            shapes = {n: f"{v.dtype}{list(v.shape)}" for n, v in feeds.items()}
            raise PackageError(f"the model failed on calibration inputs {shapes}: {exc}") from exc

    def _run_tflite(self, feeds: Arrays) -> Arrays:
        tfl = self._tfl
        for name, x in feeds.items():
            tfl.resize_tensor_input(self._in[name]["index"], list(x.shape))
        tfl.allocate_tensors()
        for name, x in feeds.items():
            tfl.set_tensor(self._in[name]["index"], x)
        tfl.invoke()
        return {n: np.array(tfl.get_tensor(self._out[n]["index"])) for n in self.outputs}


def run_calibration(
    session: Session,
    roles: Sequence[InputRole],
    inputs: Mapping[str, TensorSpec],
    quant_out: Mapping[str, tuple[float, int] | None],
    samples: Mapping[str, npt.NDArray[np.float32]],
) -> Run:
    """Every calibration sample through the model (in batches when no input is unbatched)."""
    data = [r for r in roles if r.role == "data"]
    state = [r for r in roles if r.role == "state"]
    constants = {
        r.name: np.asarray(r.value, dtype=inputs[r.name].dtype).reshape(inputs[r.name].shape)
        for r in roles
        if r.role == "constant"
    }
    n = len(next(iter(samples.values())))
    batched = all(inputs[r.name].batched for r in data) and not state
    step = BATCH if batched else 1
    current = {
        r.name: np.full(inputs[r.name].shape, r.initial, dtype=inputs[r.name].dtype) for r in state
    }
    fed: list[Arrays] = []
    outs: list[Arrays] = []
    calls: list[Arrays] = []
    for start in range(0, n, step):
        feeds: Arrays = dict(constants)
        for r in data:
            spec = inputs[r.name]
            raw = samples[r.name][start : start + step]
            if not spec.batched:
                raw = raw[:1]
            try:
                feeds[r.name] = to_tensor(
                    raw,
                    r.preprocessing,
                    shape=spec.shape,
                    dtype=spec.dtype,
                    quantization=spec.quant_params,
                    name=r.name,
                )
            except InputRejected as exc:
                raise PackageError(f"calibration sample {start}: {exc}") from exc
        feeds.update(current)
        calls.append(feeds)
        result = {k: _dequantized(v, quant_out.get(k)) for k, v in session.run(feeds).items()}
        _check_finite(result, start)
        for k in range(len(next(iter(feeds.values()))) if batched else 1):
            fed.append(
                {r.name: samples[r.name][start + k] for r in data}
                | {r.name: current[r.name] for r in state}
            )
            outs.append({name: v[k : k + 1] if batched else v for name, v in result.items()})
        current = {
            r.name: np.asarray(result[r.state_from or ""], dtype=inputs[r.name].dtype)
            for r in state
        }
    return Run(fed[:n], outs[:n], calls)


def _dequantized(x: npt.NDArray[Any], q: tuple[float, int] | None) -> npt.NDArray[Any]:
    if q is None:
        return x
    return (x.astype(np.float32) - np.float32(q[1])) * np.float32(q[0])


def _check_finite(result: Arrays, start: int) -> None:
    for name, value in result.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise PackageError(
                f"output {name!r} is NaN or infinite on calibration sample {start} or the "
                "batch after it: check the calibration data matches the model's expected "
                "input range and declared preprocessing (mean/std, scale)"
            )


def output_shape(
    declared: tuple[int | None, ...], seen: Sequence[tuple[int, ...]], name: str, batched: bool
) -> list[int]:
    """The output's shape for the manifest: open dimensions filled in from the runs."""
    first = seen[0]
    if any(s[1:] != first[1:] for s in seen) or (not batched and any(s != first for s in seen)):
        raise PackageError(
            f"output {name!r} changes shape between calibration samples ({first} and others); "
            "edgefleet needs fixed output shapes: pin the input shapes in the spec file"
        )
    shape = list(first)
    if len(declared) != len(shape):
        declared = tuple([None] * len(shape))
    if batched and shape:
        shape[0] = -1
    return shape


def self_test_rows(
    run: Run, picks: Sequence[int], order_in: Sequence[str], order_out: Sequence[str]
) -> tuple[list[list[float]], list[list[float]]]:
    """The chosen calls as flat rows (fed inputs; every output), as the manifest stores them."""
    inputs, expected = [], []
    for i in picks:
        inputs.append(
            [float(v) for name in order_in for v in np.asarray(run.fed[i][name]).reshape(-1)]
        )
        expected.append(
            [round(float(v), 6) for name in order_out for v in run.outputs[i][name].reshape(-1)]
        )
    return inputs, expected


def spread(n: int, count: int) -> list[int]:
    """``count`` call indices spread evenly over ``n`` (all when fewer)."""
    if n <= count:
        return list(range(n))
    return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})


def width(spec: TensorSpec) -> int:
    return spec.features if spec.batched else math.prod(spec.shape)
