"""Float-vs-int8 agreement: checked calibration feeds, outputs of a model on them, and the
comparison the manifest records (top-1 for classification-like outputs, max/mean absolute
error for every output)."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet_contract.errors import ModelError
from edgefleet_contract.package import Agreement, OutputAgreement

Feed = Mapping[str, npt.ArrayLike]
Feeds = Feed | Sequence[Feed]
"""Model inputs by name: one mapping of whole arrays (split along the batch axis), or a
sequence of ready-made feeds (one ``session.run`` each, e.g. for fixed-batch models)."""
_CALIBRATION_BATCH = 64
DEFAULT_MIN_TOP1 = 0.99
"""Top-1 agreement with the float model below which an int8 file is not shipped."""
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def calibration_feeds(model: bytes, calibration: Feeds) -> list[dict[str, npt.NDArray[Any]]]:
    """``calibration`` as checked feeds for ``model``: every input present, of its dtype
    and fixed dimensions, finite; a mapping of whole arrays is cut into batches."""
    import onnxruntime as ort

    session = _session(model, "the float model", ort)
    specs = {i.name: i for i in session.get_inputs()}
    batches = [calibration] if isinstance(calibration, Mapping) else list(calibration)
    if not batches:
        raise ModelError("no calibration samples: give at least one batch of model inputs")
    feeds: list[dict[str, npt.NDArray[Any]]] = []
    for number, batch in enumerate(batches):
        where = "calibration" if isinstance(calibration, Mapping) else f"calibration feed {number}"
        whole = isinstance(calibration, Mapping)
        checked = {name: _checked_input(specs[name], batch, where, whole) for name in specs}
        extra = sorted(set(batch) - set(specs))
        if extra:
            raise ModelError(
                f"{where} names {extra[0]!r}, which is not an input of the model "
                f"(inputs: {', '.join(specs)})"
            )
        feeds.extend(_split(checked, specs) if whole else [checked])
    return feeds


def _checked_input(spec: Any, batch: Feed, where: str, whole: bool) -> Any:
    """One input's array, of the model's dtype and fixed dimensions (but the first when
    ``whole``: a whole calibration set is cut into batches later)."""
    name = spec.name
    if name not in batch:
        raise ModelError(
            f"{where} has no values for model input {name!r} {spec.type}{spec.shape}; "
            "give every input"
        )
    want = _ORT_DTYPES.get(spec.type)
    try:
        array = np.asarray(batch[name])
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{where}: input {name!r} is not an array: {exc}") from exc
    if want is None:
        raise ModelError(f"model input {name!r} has type {spec.type}, which cannot be calibrated")
    if array.dtype != want:
        if array.dtype.kind != np.dtype(want).kind and not (
            array.dtype.kind in "iu" and np.dtype(want).kind == "f"
        ):
            raise ModelError(
                f"{where}: input {name!r} is {array.dtype}, the model takes {spec.type}; "
                f"convert it (e.g. .astype({np.dtype(want).name}))"
            )
        array = array.astype(want)
    shape = list(spec.shape)
    dims = list(zip(shape, array.shape, strict=False))[1 if whole else 0 :]
    if array.ndim != len(shape) or any(isinstance(d, int) and d != s for d, s in dims):
        raise ModelError(
            f"{where}: input {name!r} has shape {list(array.shape)}, the model takes {shape} "
            "(named dimensions may be any size)"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ModelError(f"{where}: input {name!r} has NaN or infinite values")
    return array


def _split(
    feed: dict[str, npt.NDArray[Any]], specs: Mapping[str, Any]
) -> list[dict[str, npt.NDArray[Any]]]:
    """Whole arrays as calibration batches along the first axis (scalars go to every
    batch), of the model's fixed batch size where it has one (a remainder is dropped)."""
    counts = {n: len(a) for n, a in feed.items() if a.ndim}
    if len(set(counts.values())) > 1:
        raise ModelError(
            "calibration inputs differ in sample count ("
            + ", ".join(f"{n}: {c}" for n, c in counts.items())
            + "); give the same number of samples for every input"
        )
    total = next(iter(counts.values()), 1)
    fixed = {s.shape[0] for s in specs.values() if s.shape and isinstance(s.shape[0], int)}
    step = next(iter(fixed)) if len(fixed) == 1 else _CALIBRATION_BATCH
    if total == 0:
        raise ModelError("calibration arrays are empty: give at least one sample")
    stop = total
    if len(fixed) == 1:
        if total < step:
            raise ModelError(f"the model takes batches of {step}; give at least {step} samples")
        stop = total - total % step
    return [
        {n: a[i : i + step] if a.ndim else a for n, a in feed.items()} for i in range(0, stop, step)
    ]


def agreement(
    float_model: bytes,
    int8_model: bytes,
    samples: Feeds,
    *,
    top1_outputs: Collection[str] | None = None,
) -> Agreement:
    """How closely ``int8_model`` reproduces ``float_model`` on ``samples``, every output."""
    feeds = calibration_feeds(float_model, samples)
    return compare_outputs(
        run_onnx(float_model, feeds), run_onnx(int8_model, feeds), top1_outputs=top1_outputs
    )


def require_agreement(found: Agreement, min_top1: float) -> Agreement:
    """``found`` with ``min_top1`` recorded; raises :class:`ModelError` below it.

    An agreement without classification-like outputs has no top-1 to hold to a
    threshold and comes back unchanged (its errors are recorded all the same).
    """
    top1 = found.top1
    if top1 is None:
        return found
    if top1 < min_top1:
        worst = min((o for o in found.outputs if o.top1 is not None), key=lambda o: o.top1 or 0)
        raise ModelError(
            f"the int8 model's output {worst.name!r} agrees with the float model on the top-1 "
            f"class for only {top1:.1%} of {found.samples} calibration samples (need "
            f"{min_top1:.1%}); calibrate on more representative samples, or ship float32"
        )
    return Agreement.model_validate({**found.model_dump(), "min_top1": min_top1})


def run_onnx(model: bytes, samples: Feeds) -> dict[str, npt.NDArray[Any]]:
    """Every output of ``model`` on ``samples`` (batches concatenated), on the CPU provider."""
    import onnxruntime as ort

    session = _session(model, "the model", ort)
    feeds = calibration_feeds(model, samples)
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[npt.NDArray[Any]]] = {n: [] for n in names}
    for feed in feeds:
        try:
            outputs = session.run(names, feed)
        except Exception as exc:  # ORT raises its own exception types
            raise ModelError(f"the model failed on the samples: {exc}") from exc
        for name, value in zip(names, outputs, strict=True):
            parts[name].append(np.asarray(value))
    return {n: _concat(p) for n, p in parts.items()}


def compare_outputs(
    reference: Mapping[str, npt.ArrayLike],
    candidate: Mapping[str, npt.ArrayLike],
    *,
    top1_outputs: Collection[str] | None = None,
) -> Agreement:
    """Agreement of ``candidate`` outputs with ``reference`` ones, output by output.

    Top-1 agreement is computed for the outputs named in ``top1_outputs``, or by
    default for classification-like ones (float ``(batch, classes)`` with more than
    one class); every output gets its max and mean absolute error.  NaN or
    infinite values are refused: a model that produces them on its own
    calibration set is not fit to ship.
    """
    if sorted(reference) != sorted(candidate):
        raise ModelError(f"the models' outputs differ: {sorted(reference)} vs {sorted(candidate)}")
    outputs = []
    samples = 0
    for name in reference:
        ref = np.asarray(reference[name])
        got = np.asarray(candidate[name])
        if ref.shape != got.shape:
            raise ModelError(f"output {name!r} has shape {got.shape}, expected {ref.shape}")
        for label, array in (("float", ref), ("int8", got)):
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise ModelError(
                    f"the {label} model's output {name!r} has NaN or infinite values on the "
                    "calibration samples; check the model and the preprocessing"
                )
        diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
        top1 = None
        classes = ref.ndim == 2 and ref.shape[1] > 1
        if classes and (
            name in top1_outputs if top1_outputs is not None else ref.dtype.kind == "f"
        ):
            top1 = float((ref.argmax(axis=1) == got.argmax(axis=1)).mean())
        samples = max(samples, len(ref) if ref.ndim else 1)
        outputs.append(
            OutputAgreement(
                name=name,
                top1=top1,
                max_abs_error=_finite(diff.max()) if diff.size else 0.0,
                mean_abs_error=_finite(diff.mean()) if diff.size else 0.0,
            )
        )
    return Agreement(samples=max(samples, 1), outputs=outputs)


def _finite(value: Any) -> float:
    number = float(value)
    return number if math.isfinite(number) else float(np.finfo(np.float32).max)


def _concat(parts: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    if len(parts) == 1 or parts[0].ndim == 0:
        return parts[0] if len(parts) == 1 else np.stack(parts)
    return np.concatenate(parts)


def _session(model: bytes, what: str, ort: Any) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types for unloadable graphs
        raise ModelError(f"ONNX Runtime cannot load {what}: {exc}") from exc
