"""The server-side state of a Flower strategy, saved with a round's checkpoint.

A resumed run restarts its strategy object, so without this FedAdam/FedYogi/
FedAdagrad would restart their moments (``m_t``, ``v_t``), FedAvgM its
momentum, adaptive clipping its clipping norm and an accountant its privacy
ledger, and the resumed run would not be the run that was interrupted.

The blob is an ``.npz`` of named arrays plus one JSON entry (never a pickle: it
is read back from the database).  Wrappers (DP) are walked through their
``strategy`` attribute, each level keyed by its depth and class name, so a
blob restores only into the same strategy shape.  A strategy of our own that
holds more (an asynchronous buffer) implements ``edgefleet_state() -> (dict,
dict of arrays)`` and ``edgefleet_restore(meta, arrays)``; they are called here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.serverapp.strategy import Strategy

from edgefleet_contract.errors import FederationError

VERSION = 1
_ARRAY_DICTS = ("m_t", "v_t")
"""FedOpt's moments (name -> array)."""
_ARRAY_LISTS = ("momentum_vector",)
"""FedAvgM's server momentum (a list in parameter order)."""
_FLOATS = ("clipping_norm",)
"""Adaptive clipping moves its norm every round (fixed clipping keeps it: harmless)."""


def _chain(strategy: Strategy) -> Iterator[Strategy]:
    current: Any = strategy
    while current is not None:
        yield current
        inner = getattr(current, "strategy", None)
        current = inner if isinstance(inner, Strategy) else None


def save(strategy: Strategy, *, extra: dict[str, Any] | None = None) -> bytes:
    """The strategy's state (and ``extra`` bookkeeping of the runner) as bytes."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    levels: list[dict[str, Any]] = []
    for depth, level in enumerate(_chain(strategy)):
        entry: dict[str, Any] = {"class": type(level).__name__, "dicts": [], "lists": {}}
        for attr in _ARRAY_DICTS:
            value = getattr(level, attr, None)
            if isinstance(value, dict):
                entry["dicts"].append(attr)
                for key, array in value.items():
                    arrays[f"{depth}/{attr}/{key}"] = np.asarray(array)
        for attr in _ARRAY_LISTS:
            value = getattr(level, attr, None)
            if isinstance(value, list):
                entry["lists"][attr] = len(value)
                for i, array in enumerate(value):
                    arrays[f"{depth}/{attr}/{i}"] = np.asarray(array)
        for attr in _FLOATS:
            value = getattr(level, attr, None)
            if isinstance(value, int | float):
                entry[attr] = float(value)
        accountant = getattr(level, "accountant", None)
        if accountant is not None and hasattr(accountant, "state_dict"):
            entry["accountant"] = accountant.state_dict()
        own = getattr(level, "edgefleet_state", None)
        if callable(own):
            meta, own_arrays = own()
            entry["own"] = meta
            for key, array in own_arrays.items():
                arrays[f"{depth}/own/{key}"] = np.asarray(array)
        levels.append(entry)
    header = {"v": VERSION, "levels": levels, "extra": extra or {}}
    buffer = io.BytesIO()
    payload: dict[str, Any] = {
        "__header__": np.frombuffer(json.dumps(header).encode(), np.uint8),
        **arrays,
    }
    np.savez(buffer, **payload)
    return buffer.getvalue()


def restore(strategy: Strategy, blob: bytes) -> dict[str, Any]:
    """Put a saved state back into a freshly made ``strategy``; returns the ``extra`` part.

    An empty blob (a checkpoint from before strategy state was saved) restores nothing."""
    if not blob:
        return {}
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            header = json.loads(bytes(data["__header__"]).decode())
            arrays = {k: data[k] for k in data.files if k != "__header__"}
    except (ValueError, KeyError, OSError) as exc:
        raise FederationError(f"the checkpoint's strategy state is unreadable: {exc}") from exc
    levels = list(_chain(strategy))
    saved = header.get("levels", [])
    shape = [type(s).__name__ for s in levels]
    if header.get("v") != VERSION or [e.get("class") for e in saved] != shape:
        raise FederationError(
            f"the checkpoint's strategy state was saved for {[e.get('class') for e in saved]}, "
            f"this run's strategy is {shape}; resume it with the spec it started with"
        )
    for depth, (level, entry) in enumerate(zip(levels, saved, strict=True)):
        for attr in entry.get("dicts", []):
            setattr(level, attr, _under(arrays, f"{depth}/{attr}/"))
        for attr, count in entry.get("lists", {}).items():
            setattr(level, attr, [arrays[f"{depth}/{attr}/{i}"] for i in range(int(count))])
        for attr in _FLOATS:
            if attr in entry:
                setattr(level, attr, float(entry[attr]))
        accountant = getattr(level, "accountant", None)
        if "accountant" in entry and accountant is not None:
            accountant.load_state_dict(entry["accountant"])
        own = getattr(level, "edgefleet_restore", None)
        if "own" in entry and callable(own):
            own(entry["own"], _under(arrays, f"{depth}/own/"))
    extra = header.get("extra", {})
    return extra if isinstance(extra, dict) else {}


def _under(arrays: dict[str, npt.NDArray[Any]], prefix: str) -> dict[str, npt.NDArray[Any]]:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
