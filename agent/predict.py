"""``edge-agent predict FILE``: ask the running daemon, or load the model in-process.

Going through the daemon's local API is the normal path on a device: the
prediction is counted in telemetry and gets an id for feedback.  Without a
daemon (a bench, a CI job, a fresh board) the same package is verified,
self-tested and run in this process instead, so the answer is the same.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet_contract.errors import InputRejected, ModelError
from edgefleet_contract.preprocess import decode_image

from . import localclient
from .config import AgentSettings
from .inputs import JSON, decode_task_body, read_file
from .runtime import MAX_BATCH
from .serving import ModelService, NoModel, describe, prediction_rows

log = logging.getLogger(__name__)


IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
}


def predict_file(settings: AgentSettings, file: Path, model: Path | None) -> dict[str, object]:
    """Predict the rows (``.npy``/``.csv``/``.json``) or the image file ``file``.

    A ``.json`` file with ``{"inputs": {"name": ...}}`` names the inputs of a model
    with several; it is sent to the daemon as it is.
    """
    image = IMAGE_TYPES.get(file.suffix.lower())
    batch: Any
    if image is not None:
        body = _read_bounded(file)
        batch = decode_image(body)
    elif file.suffix.lower() == ".json" and (named := _named_inputs(file)) is not None:
        body, image, batch = named[0], JSON, named[1]
    else:
        rows = read_file(file)
        batch = rows.reshape(1, -1) if rows.ndim == 1 else rows
    tried = ""
    if model is None and settings.local_api.enabled:
        where = localclient.address(settings.local_api, settings.data_dir)
        try:
            if image is not None:
                return _answer(
                    where, *localclient.request(where, "POST", "/v1/predict", body, image)
                )
            return _via_daemon(where, batch, settings.local_api.max_batch)
        except NoModel as exc:
            tried = f"the daemon at {where} has no model ({exc}); "
        except OSError as exc:
            tried = f"no daemon answers at {where} ({exc.strerror or exc}); "
            log.debug("%s", tried)
    path = model or settings.model
    if path is None:
        raise NoModel(
            f"{tried}no model to load in-process: pass --model PACKAGE or set `model` in agent.toml"
        )
    service = ModelService(settings.threads, recorder=None)
    loaded = service.replace(path)
    out: list[Any] = []
    if loaded.runner is not None:  # a format-2 package: any task, named outputs
        out = service.infer(batch)[0].results
    elif isinstance(batch, dict):
        raise InputRejected(f"{loaded.manifest.name} takes one input: send rows, not names")
    for start in range(0, len(batch) if loaded.runner is None else 0, MAX_BATCH):
        out += prediction_rows(service.predict(batch[start : start + MAX_BATCH]))
    info = describe(loaded)
    return {
        "source": f"in-process ({path})",
        "model": {"name": info["name"], "version": info["version"]},
        "predictions": out,
    }


def _via_daemon(where: str, batch: npt.NDArray[Any], max_batch: int) -> dict[str, object]:
    predictions: list[object] = []
    model: object = None
    for start in range(0, len(batch), max_batch):
        status, doc = localclient.predict(where, np.asarray(batch[start : start + max_batch]))
        answer = _answer(where, status, doc)
        model = answer["model"]
        predictions += answer["predictions"]  # type: ignore[arg-type]
    return {"source": where, "model": model, "predictions": predictions}


def _answer(where: str, status: int, doc: Any) -> dict[str, object]:
    detail = _detail(doc)
    if status == 503:
        raise NoModel(detail)
    if status in (400, 413, 415, 422):
        raise InputRejected(detail)
    if status != 200 or not isinstance(doc, dict):
        raise ModelError(f"the local API at {where} answered {status}: {detail}")
    return {"source": where, "model": doc.get("model"), "predictions": doc.get("predictions", [])}


def _named_inputs(file: Path) -> tuple[bytes, dict[str, Any]] | None:
    """The body and the inputs of a JSON file that names its inputs, else None."""
    data = _read_bounded(file, 64 * 1024 * 1024)
    inputs, _ = decode_task_body(JSON, data, max_rows=MAX_BATCH)
    return (data, inputs) if isinstance(inputs, dict) else None


def _read_bounded(file: Path, max_bytes: int = 32 * 1024 * 1024) -> bytes:
    """The bytes of ``file``, refused past ``max_bytes`` (an image or a JSON body)."""
    try:
        if file.stat().st_size > max_bytes:
            raise InputRejected(f"{file}: over the {max_bytes}-byte input limit")
        return file.read_bytes()
    except OSError as exc:
        raise InputRejected(f"cannot read {file}: {exc.strerror or exc}") from None


def _detail(doc: object) -> str:
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return str(doc["error"].get("detail", ""))
    return str(doc)[:200]
