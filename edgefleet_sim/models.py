"""One loaded model per package version, shared by every simulated device of a process."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from agent.runtime import Model
from agent.serving import ModelService


class ModelCache:
    """Loaded models by the SHA-256 of their package file.

    A runtime session is read-only once built and safe to call from many
    threads, so sharing it is what lets a process play a thousand devices; the
    package is still read and hash-checked by whoever loads it first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, Model] = {}
        self.loads = 0
        """Packages really loaded (not served from the cache)."""

    def get(self, path: Path, threads: int) -> Model:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        with self._lock:
            model = self._models.get(digest)
            if model is None:
                model = Model.load(Path(path), threads=threads)
                self._models[digest] = model
                self.loads += 1
            return model

    def __len__(self) -> int:
        return len(self._models)


SHARED_MODELS = ModelCache()


class SharedModelService(ModelService):
    """A :class:`ModelService` whose ``load`` goes through :data:`SHARED_MODELS`.

    Activation, the recorder, the prediction cache and feedback stay per device.
    """

    def load(self, path: Path) -> Model:
        try:
            return SHARED_MODELS.get(path, self.threads)
        except Exception:
            return super().load(path)  # the real path raises the clear ModelError
