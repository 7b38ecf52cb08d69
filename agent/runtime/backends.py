"""The inference runtimes behind one small interface: ONNX Runtime and TFLite.

A backend runs an already-preprocessed float/int batch and returns the raw
output tensor; everything model-specific (preprocessing, quantization of the
input, labels, self-test) lives in :mod:`.model` so the runtimes stay
interchangeable.  Runtime libraries are imported lazily, so a device that has
only one of them installed can still run packages for it.

TFLite comes from ``ai_edge_litert`` (preferred; works with numpy 2) or the
older ``tflite_runtime`` (numpy < 2 only).  ``EDGEFLEET_TFLITE_BACKEND``
forces one of them (``ai_edge_litert`` | ``tflite_runtime``; default ``auto``).
"""

from __future__ import annotations

import importlib
import math
import os
import threading
from importlib import metadata
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edgefleet_contract.errors import ModelError, PackageError, RuntimeUnavailable
from edgefleet_contract.package import Manifest, TensorSpec

TFLITE_ENV = "EDGEFLEET_TFLITE_BACKEND"
RUNTIME_EXTRAS = {"onnx": "agent-onnx", "tflite": "agent-tflite"}
"""The pip extra that installs each runtime: an agent needs only its models' runtimes."""
_TFLITE_MODULES = {
    "ai_edge_litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite_runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
}


class Backend(Protocol):
    name: str
    """Library and version, e.g. ``onnxruntime 1.31.1``: reported with self-test failures."""

    def run(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]: ...

    def run_all(self, feeds: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Every output by name, for models with several inputs or outputs."""
        ...


def open_backend(manifest: Manifest, model: bytes, *, threads: int = 1) -> Backend:
    """A backend for the package's runtime; raises RuntimeUnavailable or PackageError."""
    if not 1 <= threads <= 256:
        raise ModelError(f"threads must be between 1 and 256, got {threads}")
    if manifest.runtime == "onnx":
        return OnnxBackend(manifest, model, threads)
    return TfliteBackend(manifest, model, threads)


def install_hint(runtime: str) -> str:
    """What to run on the device so it can serve ``runtime`` packages."""
    extra = RUNTIME_EXTRAS.get(runtime)
    if extra is None:
        return f"no edgefleet release serves {runtime!r} models; upgrade the agent"
    hint = f"pip install 'edgefleet[{extra}]' and restart the agent"
    if runtime == "tflite":
        hint += " (boards without an ai-edge-litert wheel: 'edgefleet[agent-legacy]')"
    return hint


def available_runtimes() -> list[str]:
    """Runtimes this device can serve (``onnx``, ``tflite``), for the reported capabilities."""
    found = []
    if _find("onnxruntime"):
        found.append("onnx")
    if any(_find(module.partition(".")[0]) for module, _ in _TFLITE_MODULES.values()):
        found.append("tflite")
    return found


def _find(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


class OnnxBackend:
    """ONNX Runtime on the CPU provider; ``InferenceSession.run`` is thread-safe."""

    def __init__(self, manifest: Manifest, model: bytes, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeUnavailable(
                f"{manifest.name} {manifest.version} ({manifest.flavor}) needs ONNX Runtime, "
                f"which is not installed on this device: {install_hint('onnx')}"
            ) from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # No arena: it keeps the peak of the self-test batch resident for the life of the
        # daemon (~4 MB on the CNN); per-run allocations cost nothing measurable here.
        options.enable_cpu_mem_arena = False
        try:
            self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own types for unloadable graphs
            raise PackageError(f"ONNX Runtime cannot load {manifest.model_file}: {exc}") from exc
        # The Python session keeps the bytes it was built from, only to rebuild itself when
        # its providers change (set_providers, or a failed accelerator falling back), which
        # a CPU-only session never does; the built session has its own copy of the graph.
        if getattr(self._session, "_model_bytes", None) is not None:
            self._session._model_bytes = None
        self._input = manifest.inputs[0].name
        self._outputs = [manifest.outputs[0].name]
        self._all = [o.name for o in manifest.outputs]
        _check_names(
            manifest,
            [i.name for i in self._session.get_inputs()],
            [o.name for o in self._session.get_outputs()],
        )
        self.name = f"onnxruntime {ort.__version__}"

    def run(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        try:
            out = self._session.run(self._outputs, {self._input: x})[0]
        except Exception as exc:
            raise ModelError(f"inference failed in {self.name}: {exc}") from exc
        return np.asarray(out)

    def run_all(self, feeds: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        try:
            out = self._session.run(self._all, feeds)
        except Exception as exc:
            raise ModelError(f"inference failed in {self.name}: {exc}") from exc
        return dict(zip(self._all, out, strict=True))  # numpy arrays already


class TfliteBackend:
    """A TFLite interpreter; one invocation at a time (interpreters are not thread-safe).

    The batch dimension is resized only when the batch size changes, so a
    steady stream of same-sized requests pays no reallocation.
    """

    def __init__(self, manifest: Manifest, model: bytes, threads: int) -> None:
        interpreter_class, self.name = _tflite_interpreter(manifest)
        try:
            self._interpreter = interpreter_class(model_content=model, num_threads=threads)
            self._interpreter.allocate_tensors()
        except Exception as exc:
            if "NumPy" in str(exc) or "_ARRAY_API" in str(exc):
                raise RuntimeUnavailable(
                    f"{self.name} was built for numpy 1.x and cannot run under numpy "
                    f"{np.__version__}; install ai-edge-litert or use numpy<2"
                ) from exc
            raise PackageError(f"{self.name} cannot load {manifest.model_file}: {exc}") from exc
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        _check_names(manifest, [d["name"] for d in inputs], [d["name"] for d in outputs])
        _check_tflite_tensor(manifest, inputs[0], manifest.inputs[0])
        _check_tflite_tensor(manifest, outputs[0], manifest.outputs[0])
        self._in = int(inputs[0]["index"])
        self._out = int(outputs[0]["index"])
        self._shape: tuple[int, ...] = tuple(int(d) for d in inputs[0]["shape"])
        self._shapes = {d["name"]: tuple(int(v) for v in d["shape"]) for d in inputs}
        self._index_in = {d["name"]: int(d["index"]) for d in inputs}
        self._index_out = {d["name"]: int(d["index"]) for d in outputs}
        self._lock = threading.Lock()

    def run(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        interpreter = self._interpreter
        with self._lock:
            try:
                if x.shape != self._shape:
                    interpreter.resize_tensor_input(self._in, list(x.shape))
                    interpreter.allocate_tensors()
                    self._shape = x.shape
                interpreter.set_tensor(self._in, x)
                interpreter.invoke()
                return np.asarray(interpreter.get_tensor(self._out))
            except Exception as exc:
                self._shape = ()  # force a clean resize next time
                raise ModelError(f"inference failed in {self.name}: {exc}") from exc

    def run_all(self, feeds: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        interpreter = self._interpreter
        with self._lock:
            try:
                resized = False
                for name, x in feeds.items():
                    if x.shape != self._shapes[name]:
                        interpreter.resize_tensor_input(self._index_in[name], list(x.shape))
                        self._shapes[name] = x.shape
                        resized = True
                if resized:
                    interpreter.allocate_tensors()
                    self._shape = ()
                for name, x in feeds.items():
                    interpreter.set_tensor(self._index_in[name], x)
                interpreter.invoke()
                return {
                    name: np.array(interpreter.get_tensor(index))
                    for name, index in self._index_out.items()
                }
            except Exception as exc:
                self._shapes = {name: () for name in self._shapes}
                self._shape = ()
                raise ModelError(f"inference failed in {self.name}: {exc}") from exc


def _tflite_interpreter(manifest: Manifest) -> tuple[Any, str]:
    choice = os.environ.get(TFLITE_ENV, "auto").strip() or "auto"
    if choice != "auto" and choice not in _TFLITE_MODULES:
        raise RuntimeUnavailable(
            f"{TFLITE_ENV}={choice!r} is not a TFLite backend; use "
            f"{' or '.join(_TFLITE_MODULES)} (or auto)"
        )
    names = list(_TFLITE_MODULES) if choice == "auto" else [choice]
    problems = []
    for name in names:
        module_name, distribution = _TFLITE_MODULES[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
            continue
        return module.Interpreter, f"{name} {_version(distribution)}"
    raise RuntimeUnavailable(
        f"{manifest.name} {manifest.version} ({manifest.flavor}) needs a TFLite runtime and "
        f"none is importable ({'; '.join(problems)}): {install_hint('tflite')}"
    )


def _check_names(manifest: Manifest, inputs: list[str], outputs: list[str]) -> None:
    want_in = [t.name for t in manifest.inputs]
    want_out = [t.name for t in manifest.outputs]
    if sorted(inputs) != sorted(want_in) or sorted(outputs) != sorted(want_out):
        raise PackageError(
            f"{manifest.model_file} has inputs {inputs} and outputs {outputs}; the manifest "
            f"declares {want_in} and {want_out}"
        )


def _check_tflite_tensor(manifest: Manifest, detail: dict[str, Any], spec: TensorSpec) -> None:
    """A TFLite file carries its tensors' types and int8 scales itself; the manifest must
    say the same, or the float rows would be quantized onto the wrong grid."""
    dtype = np.dtype(detail["dtype"]).name
    scale, zero = detail["quantization"]
    q = spec.quantization
    if dtype != spec.dtype:
        raise PackageError(
            f"{manifest.model_file}: tensor {spec.name!r} is {dtype} in the file, the manifest "
            f"declares {spec.dtype}; repack the model so the manifest reads its types from it"
        )
    if q is not None and (not math.isclose(scale, q.scale, rel_tol=1e-6) or zero != q.zero_point):
        raise PackageError(
            f"{manifest.model_file}: tensor {spec.name!r} is quantized with scale {scale:.6g} "
            f"and zero point {zero} in the file, the manifest declares scale {q.scale:.6g} "
            f"and zero point {q.zero_point}; repack the model"
        )
