"""The frozen backbone of a package with a trainable head, run in the device's runtime.

A package packed with ``--embedding`` ships the user's graph up to that tensor
as ``backbone.onnx``; a round trains only the dense head after it, in numpy.
Training samples are kept as the raw inputs the model was asked about and go
through the backbone when a round runs, not stored as embeddings: a raw sample
stays valid when a new package version changes the backbone, is what the
local API's feedback already holds for every other model, and costs one
backbone pass per round (small next to the round itself).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.runtime.backends import Backend, open_backend
from edgefleet_contract.errors import ModelError
from edgefleet_contract.package import ModelPackage, TensorSpec
from edgefleet_contract.preprocess import prepare, raw_shape

F32 = npt.NDArray[np.float32]


class Backbone:
    """Raw samples ``(n, width)`` -> embeddings ``(n, features)`` of one package."""

    def __init__(self, package: ModelPackage, *, threads: int = 1) -> None:
        manifest = package.manifest
        trainable = manifest.trainable
        if trainable is None or trainable.embedding is None or trainable.backbone_file is None:
            raise ModelError(f"{manifest.name} {manifest.version} has no trainable head")
        assert manifest.task is not None  # format 2: check_head guarantees the task
        role = manifest.task.data_inputs[0]
        self._prep = role.preprocessing
        self._spec = manifest.input_spec(role.name)
        self._raw = raw_shape(self._prep, self._spec.shape)
        self.width = math.prod(self._raw)
        """Values in one stored raw sample (what the sample store is asked for)."""
        self.name = manifest.name
        self.embedding = trainable.embedding
        self.features = math.prod(trainable.input_shape)
        out = TensorSpec(name=trainable.embedding, shape=[-1, self.features], dtype="float32")
        frozen = manifest.model_copy(
            update={"outputs": [out], "model_file": trainable.backbone_file}
        )
        self._backend: Backend = open_backend(
            frozen, package.members[trainable.backbone_file], threads=threads
        )

    def matches(self, embedding: str | None, features: int) -> bool:
        """Whether a round's head reads this backbone's embedding."""
        return embedding == self.embedding and features == self.features

    def __call__(self, raw: npt.ArrayLike, batch: int = 64) -> F32:
        rows = np.asarray(raw, np.float32).reshape(-1, *self._raw)
        q = self._spec.quantization
        quant: Any = (q.scale, q.zero_point) if q is not None else None
        parts = [np.zeros((0, self.features), np.float32)]
        for s in range(0, len(rows), batch):
            x = prepare(
                rows[s : s + batch],
                self._prep,
                shape=self._spec.shape,
                dtype=self._spec.dtype,
                quantization=quant,
                name=self._spec.name,
            )
            parts.append(np.asarray(self._backend.run(x), np.float32).reshape(len(x), -1))
        return np.concatenate(parts)
