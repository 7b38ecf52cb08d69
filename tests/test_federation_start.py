"""A training run starts from the fleet's newest model, the artifact registry included."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet_contract.errors import FederationError
from fleet_server.federation.packages import DIST, find_package, registered
from fleet_server.server import FleetServer

from .ota_device_kit import package_bytes


def test_a_run_starts_from_the_newest_registered_version(
    fleet: FleetServer, tmp_path: Path
) -> None:
    assert find_package("digits", [DIST]).manifest.version == "1.0.0"  # the factory model
    upload = tmp_path / "digits-1.2.0-onnx-float32.efpkg"
    upload.write_bytes(package_bytes("1.2.0"))  # what an earlier run registered, say
    fleet.artifacts.add_model(upload, lineage={"source": "upload"}, actor="test")
    upload.unlink()  # the run must find it in the registry, not where it was uploaded from
    files = registered(fleet.artifacts, "digits")
    assert len(files) == 1
    assert find_package("digits", [DIST], files=files).manifest.version == "1.2.0"
    # the server's own wiring: what a run of model "digits" would start from now
    assert fleet.training._packages("digits").manifest.version == "1.2.0"


def test_no_trainable_package_anywhere_says_where_it_looked(tmp_path: Path) -> None:
    broken = tmp_path / "digits-9.0.0-onnx-float32.efpkg"
    broken.write_bytes(b"not a package")  # unreadable files are passed over, not fatal
    with pytest.raises(FederationError, match="artifact registry"):
        find_package("digits", [tmp_path], files=[broken])
