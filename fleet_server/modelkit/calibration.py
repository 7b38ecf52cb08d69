"""Calibration samples from the files users have: ``.npy``, ``.npz``, ``.csv``, image folders.

The samples come back raw (before the declared preprocessing) and canonical
(:func:`~edgefleet_contract.preprocess.canonical`: images decoded and resized,
rows reshaped), one array per data input, so the packer calibrates, self-tests
and builds the drift reference on exactly what a device will be sent.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet_contract.errors import InputRejected, PackageError
from edgefleet_contract.package import TensorSpec
from edgefleet_contract.preprocess import canonical, decode_image, raw_shape
from edgefleet_contract.task import InputRole

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_CALIBRATION_BYTES = 1024 * 1024 * 1024
Samples = dict[str, npt.NDArray[np.float32]]


def load_calibration(
    path: Path, inputs: Sequence[tuple[InputRole, TensorSpec]], *, limit: int = 2000
) -> Samples:
    """Up to ``limit`` canonical samples per data input; raises PackageError naming the fix."""
    if not path.exists():
        raise PackageError(f"calibration data {path} does not exist")
    raw: dict[str, Any]
    if path.is_dir():
        raw = {_only(inputs, path, "a folder of images"): _images(path, limit)}
    elif path.stat().st_size > MAX_CALIBRATION_BYTES:
        raise PackageError(f"calibration file {path} is over {MAX_CALIBRATION_BYTES} bytes")
    elif path.suffix == ".npy":
        raw = {_only(inputs, path, "an .npy file"): _npy(path.read_bytes(), path.name)}
    elif path.suffix == ".npz":
        raw = _npz(path, inputs)
    elif path.suffix == ".csv":
        role, spec = inputs[0]
        raw = {_only(inputs, path, "a .csv file"): _csv(path, role, spec.features)}
    else:
        raise PackageError(
            f"calibration {path.name}: use a .npy, .npz or .csv file or a folder of images"
        )
    out: Samples = {}
    count = None
    for role, spec in inputs:
        out[role.name] = _canonical(raw[role.name][:limit], role, spec, path.name)
        if count is not None and len(out[role.name]) != count:
            raise PackageError(
                f"calibration {path.name}: the inputs have different sample counts "
                f"({count} and {len(out[role.name])} for {role.name!r})"
            )
        count = len(out[role.name])
    return out


def _only(inputs: Sequence[tuple[InputRole, TensorSpec]], path: Path, what: str) -> str:
    if len(inputs) != 1:
        names = [r.name for r, _ in inputs]
        raise PackageError(
            f"calibration {path.name} is {what}, which holds one input; the model takes "
            f"{names}: give an .npz with one array per input name"
        )
    return inputs[0][0].name


def _npy(data: bytes, where: str) -> npt.NDArray[np.float32]:
    try:
        array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise PackageError(f"calibration {where} is not a readable .npy array: {exc}") from exc
    if array.dtype.kind not in "fiub":
        raise PackageError(f"calibration {where} holds {array.dtype}, not numbers")
    return np.asarray(array, dtype=np.float32)


def _npz(path: Path, inputs: Sequence[tuple[InputRole, TensorSpec]]) -> Samples:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise PackageError(f"calibration {path.name} is not a readable .npz file: {exc}") from exc
    with archive:
        arrays = {
            Path(n).stem: _npy(archive.read(n), f"{path.name}:{n}")
            for n in archive.namelist()
            if n.endswith(".npy")
        }
    names = [r.name for r, _ in inputs]
    if len(names) == 1 and len(arrays) == 1:
        return {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise PackageError(
            f"calibration {path.name} has arrays {sorted(arrays)}; it needs one per data "
            f"input: missing {missing}"
        )
    return {n: arrays[n] for n in names}


def _csv(path: Path, role: InputRole, features: int) -> npt.NDArray[np.float32]:
    """The declared feature columns, by name; undeclared, the numeric columns when there
    are exactly as many as the model takes (an id or a label column is left out)."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise PackageError(f"calibration {path.name} needs a header row and at least one row")
    header = [h.strip() for h in rows[0]]
    wanted = role.preprocessing.features
    if wanted is not None:
        missing = [f for f in wanted if f not in header]
        if missing:
            raise PackageError(
                f"calibration {path.name} has no column {missing[0]!r} (the declared feature "
                f"order needs {wanted}); its columns are {header}"
            )
        columns = [header.index(f) for f in wanted]
    else:
        columns = [c for c in range(len(header)) if _numeric_column(rows[1:], c)]
        if len(columns) != features:
            raise PackageError(
                f"calibration {path.name} has {len(columns)} numeric columns "
                f"({[header[c] for c in columns]}), the model takes {features} features: "
                "declare them in order with [inputs.NAME.preprocessing] features = [...]"
            )
    try:
        values = [[float(row[c]) for c in columns] for row in rows[1:] if row]
    except (ValueError, IndexError) as exc:
        raise PackageError(
            f"calibration {path.name}: a row is not numeric in the used columns ({exc}); "
            "declare the feature columns with [inputs.NAME] features = [...]"
        ) from exc
    return np.asarray(values, dtype=np.float32)


def _numeric_column(rows: list[list[str]], column: int) -> bool:
    try:
        for row in rows[:50]:
            if row:
                float(row[column])
    except (ValueError, IndexError):
        return False
    return True


def _images(folder: Path, limit: int) -> list[npt.NDArray[np.uint8]]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PackageError(
            f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    out = []
    for file in files[:limit]:
        try:
            out.append(decode_image(file.read_bytes()))
        except InputRejected as exc:
            raise PackageError(f"calibration image {file.name}: {exc}") from exc
    return out


def _canonical(
    raw: npt.NDArray[np.float32] | list[npt.NDArray[np.uint8]],
    role: InputRole,
    spec: TensorSpec,
    where: str,
) -> npt.NDArray[np.float32]:
    want = raw_shape(role.preprocessing, spec.shape)
    prep = role.preprocessing
    try:
        if isinstance(raw, list):  # images of any size: each resized on its own
            samples = np.concatenate(
                [canonical(img, prep, shape=spec.shape, name=role.name) for img in raw]
            )
        elif not spec.batched:  # one sample per call: the file holds a sequence of calls
            samples = np.stack(
                [canonical(s, prep, shape=spec.shape, name=role.name)[0] for s in raw]
            )
        else:
            samples = canonical(raw, prep, shape=spec.shape, name=role.name)
    except InputRejected as exc:
        raise PackageError(
            f"calibration {where} does not fit input {role.name!r}: {exc}; give samples of "
            f"shape (n, {', '.join(map(str, want))})"
        ) from exc
    if not np.isfinite(samples).all():
        bad = int(np.flatnonzero(~np.isfinite(samples.reshape(len(samples), -1)).all(axis=1))[0])
        raise PackageError(f"calibration {where}: sample {bad} of {role.name!r} has NaN or inf")
    return samples
