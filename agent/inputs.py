"""Turning request bodies and files into feature rows, before any model sees them.

The local API and ``edge-agent predict`` accept the same three encodings, and
both must refuse bad input with a message a person can act on rather than a
stack trace, so the decoding lives here, free of I/O:

* JSON ``{"inputs": [[...], ...]}`` (a batch) or ``{"inputs": [...]}`` (one row);
* raw little-endian float32 (``application/octet-stream``): the row count is
  the byte count divided by ``4 * features``;
* a ``.npy`` array (``application/x-npy``), any numeric dtype, never pickles.

A CSV file (the CLI only) holds one row per line, numbers separated by commas.
Shape checks against the model happen in :meth:`agent.runtime.Model.predict`;
here only the row limit is enforced, before the array is built in full.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet_contract.errors import InputRejected
from edgefleet_contract.preprocess import decode_image

JSON = "application/json"
RAW = "application/octet-stream"
NPY = "application/x-npy"
IMAGES = ("image/png", "image/jpeg", "image/bmp", "image/webp")
CONTENT_TYPES = (JSON, RAW, NPY, *IMAGES)
MAX_TENSOR_DIMS = 6


def decode_body(
    content_type: str, body: bytes, *, features: int, max_rows: int
) -> npt.NDArray[Any]:
    """The feature rows in a ``/v1/predict`` body, or :class:`InputRejected`."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == JSON:
        rows = decode_json(body)
    elif kind == RAW:
        rows = decode_raw(body, features=features)
    elif kind == NPY:
        rows = decode_npy(body)
    else:
        raise InputRejected(
            f'unsupported content type {kind[:80]!r}: send {JSON} ({{"inputs": [[...]]}}), '
            f"{RAW} (little-endian float32) or {NPY}"
        )
    check_rows(rows, max_rows)
    return rows


def decode_task_body(content_type: str, body: bytes, *, max_rows: int) -> tuple[Any, str | None]:
    """The inputs of a ``/v1/predict`` body for a format-2 model, and its session id.

    JSON ``{"inputs": {"name": [...], ...}, "session": "..."}`` names each data input
    (``"inputs": [...]`` is the one data input); an image body (PNG, JPEG, ...) is the
    one image input, decoded and resized by the model's declared preprocessing; an
    ``.npy`` body is the one data input.
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in IMAGES:
        return decode_image(body), None
    if kind == NPY:
        array = decode_npy(body)
        check_rows(array, max_rows)
        return array, None
    if kind != JSON:
        raise InputRejected(
            f"unsupported content type {kind[:80]!r} for this model: send {JSON} "
            '({"inputs": {"name": [...]}}), an image or ' + NPY
        )
    try:
        doc = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise InputRejected(f'body is not valid JSON ({exc}); send {{"inputs": ...}}') from None
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise InputRejected('JSON body must be an object with "inputs"')
    session = doc.get("session")
    if session is not None and (not isinstance(session, str) or not 0 < len(session) <= 128):
        raise InputRejected('"session" must be a string of 1 to 128 characters')
    inputs = doc["inputs"]
    if isinstance(inputs, dict):
        if len(inputs) > 16:
            raise InputRejected(f"{len(inputs)} inputs; a model takes at most 16")
        named = {str(k)[:256]: tensor(v, f"inputs.{str(k)[:64]}") for k, v in inputs.items()}
        for array in named.values():
            check_rows(array, max_rows)
        return named, session
    array = tensor(inputs, "inputs")
    check_rows(array, max_rows)
    return array, session


def tensor(value: object, what: str) -> npt.NDArray[Any]:
    """Like :func:`numeric`, for tensors of up to :data:`MAX_TENSOR_DIMS` dimensions."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return np.asarray([value])
    if not isinstance(value, list) or not value:
        raise InputRejected(f"{what} must be a number or a non-empty (nested) list of numbers")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise InputRejected(f"{what} is ragged: every row needs the same shape") from None
    if array.dtype.kind not in "iuf" or array.dtype == np.bool_:
        raise InputRejected(f"{what} must hold only numbers (found {_kind(array)})")
    if array.ndim > MAX_TENSOR_DIMS:
        raise InputRejected(f"{what} is nested {array.ndim} deep; at most {MAX_TENSOR_DIMS}")
    return array


def check_rows(rows: npt.NDArray[Any], max_rows: int) -> None:
    n = 1 if rows.ndim <= 1 else rows.shape[0]
    if n > max_rows:
        raise InputRejected(f"{n} rows is more than the {max_rows} allowed per request; split it")


def decode_json(body: bytes | str) -> npt.NDArray[Any]:
    try:
        doc = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise InputRejected(f'body is not valid JSON ({exc}); send {{"inputs": [[...]]}}') from None
    if isinstance(doc, list):
        inputs = doc
    elif isinstance(doc, dict) and "inputs" in doc:
        inputs = doc["inputs"]
    else:
        raise InputRejected('JSON body must be an object with "inputs": a row or a list of rows')
    return numeric(inputs, "inputs")


def _no_constant(name: str) -> float:
    raise InputRejected(f"{name} is not a number: inputs must be finite")


def numeric(value: object, what: str) -> npt.NDArray[Any]:
    """A non-empty array of plain numbers from nested lists, or a clear refusal."""
    if not isinstance(value, list) or not value:
        raise InputRejected(f"{what} must be a non-empty list of numbers or of rows of numbers")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise InputRejected(
            f"{what} rows have different lengths: every row needs the same number of values"
        ) from None
    if array.dtype.kind not in "iuf" or array.dtype == np.bool_:
        raise InputRejected(f"{what} must hold only numbers (found {_kind(array)})")
    if array.ndim > 3:
        raise InputRejected(f"{what} is nested {array.ndim} deep; send rows of numbers")
    return array


def _kind(array: npt.NDArray[Any]) -> str:
    return {"b": "booleans", "U": "strings", "O": "mixed or nested values", "c": "complex"}.get(
        array.dtype.kind, str(array.dtype)
    )


def decode_raw(body: bytes, *, features: int) -> npt.NDArray[np.float32]:
    row_bytes = 4 * features
    if not body or len(body) % row_bytes:
        raise InputRejected(
            f"{len(body)} bytes is not a whole number of rows: the model takes {features} "
            f"little-endian float32 values ({row_bytes} bytes) per row"
        )
    return np.frombuffer(body, dtype="<f4").reshape(-1, features)


_NPY_MAGIC = b"\x93NUMPY"


def decode_npy(body: bytes) -> npt.NDArray[Any]:
    """One ``.npy`` array.  Anything else is refused before numpy reads it: given a zip
    (``PK...``), ``np.load`` would open it as an ``.npz`` archive instead."""
    if not body.startswith(_NPY_MAGIC):
        raise InputRejected(
            "body is not a .npy array (it does not start with the .npy magic bytes; "
            "send one array saved with numpy.save, not an .npz archive)"
        )
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputRejected(f"body is not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "iuf":
        raise InputRejected("the .npy array must hold integers or floats")
    if array.size == 0:
        raise InputRejected("the .npy array is empty")
    return array


def read_file(path: Path, *, max_bytes: int = 64 * 1024 * 1024) -> npt.NDArray[Any]:
    """Rows from a ``.npy``, ``.csv`` or ``.json`` file (for ``edge-agent predict``)."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InputRejected(f"{path}: {size} bytes is over the {max_bytes}-byte input limit")
        data = path.read_bytes()
    except OSError as exc:
        raise InputRejected(f"cannot read {path}: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return decode_npy(data)
        if suffix == ".json":
            return decode_json(data)
        if suffix == ".csv":
            return decode_csv(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InputRejected(f"{path} is not UTF-8 text") from None
    except InputRejected as exc:
        raise InputRejected(f"{path}: {exc}") from None
    raise InputRejected(f"{path}: unknown file type {suffix!r}; use .npy, .csv or .json")


def decode_csv(text: str) -> npt.NDArray[np.float64]:
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = [float(cell) for cell in line.split(",")]
        except ValueError:
            if not rows:  # a header line
                continue
            raise InputRejected(f"line {number} has a value that is not a number") from None
        if not all(math.isfinite(v) for v in row):
            raise InputRejected(f"line {number} has NaN or infinite values")
        rows.append(row)
    if not rows:
        raise InputRejected("the CSV file has no rows of numbers")
    return numeric(rows, "the CSV rows")
