"""Where a run finds the current package of the model it trains.

The newest trainable float ONNX package of the model wins, wherever it is: in
the artifact registry (a version an earlier run produced, or one an operator
pushed), in the server's ``{data_dir}/models``, or among the packages the
server ships (:mod:`fleet_server.factory_models`, the factory model).  So each
run continues from the fleet's latest model instead of starting over from the
factory one, unless it names the version to start from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from edgefleet_contract.errors import EdgefleetError, FederationError
from edgefleet_contract.package import ModelPackage, read_package

from ..factory_models import DIST
from ..registry import ArtifactRegistry
from ..versions import version_key

__all__ = ["DIST", "FLAVOR", "find_package", "registered"]

FLAVOR = "onnx-float32"
"""The flavour a run trains from (and that carries the trainable weights)."""


def registered(artifacts: ArtifactRegistry, name: str) -> list[Path]:
    """The registry's float ONNX packages of ``name`` (their blob files), newest first."""
    page = artifacts.store.find_artifacts(kind="model", name=name, flavor=FLAVOR, limit=1000)
    paths = [artifacts.blob(a.sha256) for a in page.items]
    return [p for p in paths if p is not None]


def find_package(
    name: str,
    directories: Sequence[Path],
    *,
    files: Iterable[Path] = (),
    version: str | None = None,
) -> ModelPackage:
    """The newest trainable package of ``name`` among ``files`` and ``directories``, or the
    one of ``version`` when that is given."""
    found: list[ModelPackage] = []
    candidates = [*files, *(p for d in directories for p in d.glob(f"{name}-*-{FLAVOR}.efpkg"))]
    for path in candidates:
        try:
            package = read_package(path)
        except EdgefleetError:
            continue  # an unreadable file is not a starting point; another may be
        manifest = package.manifest
        wanted = version is None or manifest.version == version
        if manifest.name == name and manifest.trainable is not None and wanted:
            found.append(package)
    if not found:
        where = ", ".join(["the artifact registry", *(str(d) for d in directories)])
        what = f"{name!r}" if version is None else f"{name!r} version {version}"
        raise FederationError(f"no trainable package of model {what} in {where}")
    return max(found, key=lambda p: version_key(p.manifest.version))
