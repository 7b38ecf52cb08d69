"""Where a run finds the current package of the model it trains.

Until the artifact registry is wired in, the newest float ONNX package of a
model found in the server's ``{data_dir}/models`` or the repository's
``models/dist`` is the starting point.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgefleet_contract.errors import FederationError
from edgefleet_contract.package import ModelPackage, read_package

from ..selector import version_key

DIST = Path(__file__).resolve().parents[2] / "models" / "dist"


def find_package(name: str, directories: Sequence[Path]) -> ModelPackage:
    found: list[ModelPackage] = []
    for directory in directories:
        for path in directory.glob(f"{name}-*-onnx-float32.efpkg"):
            package = read_package(path)
            if package.manifest.name == name and package.manifest.trainable is not None:
                found.append(package)
    if not found:
        where = ", ".join(str(d) for d in directories)
        raise FederationError(f"no trainable package of model {name!r} in {where}")
    return max(found, key=lambda p: version_key(p.manifest.version))
