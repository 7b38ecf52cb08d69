"""A training run starts from the fleet's newest model, the artifact registry included, or
from the version it names; either way the run records the version it started from."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet_contract.errors import FederationError
from fleet_server.federation.packages import DIST, find_package, registered
from fleet_server.federation.spec import RunSpec
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
    assert fleet.training._packages("digits", None).manifest.version == "1.2.0"


def test_no_trainable_package_anywhere_says_where_it_looked(tmp_path: Path) -> None:
    broken = tmp_path / "digits-9.0.0-onnx-float32.efpkg"
    broken.write_bytes(b"not a package")  # unreadable files are passed over, not fatal
    with pytest.raises(FederationError, match="artifact registry"):
        find_package("digits", [tmp_path], files=[broken])


def test_a_run_names_the_version_it_starts_from_and_records_it(
    fleet: FleetServer, tmp_path: Path
) -> None:
    upload = tmp_path / "digits-1.3.0-onnx-float32.efpkg"
    upload.write_bytes(package_bytes("1.3.0"))
    fleet.artifacts.add_model(upload, lineage={"source": "upload"}, actor="test")
    files = registered(fleet.artifacts, "digits")
    assert find_package("digits", [DIST], files=files, version="1.0.0").manifest.version == "1.0.0"
    with pytest.raises(FederationError, match=r"'digits' version 7\.7\.7"):
        find_package("digits", [DIST], files=files, version="7.7.7")

    with pytest.raises(FederationError, match=r"version 7\.7\.7"):
        fleet.training.start_run(RunSpec(model="digits", parent_version="7.7.7"), actor="test")
    assert fleet.store.list_training_runs(limit=10) == []  # a refused start stores nothing
    for asked, pinned in ((None, "1.3.0"), ("1.0.0", "1.0.0")):
        spec = RunSpec(model="digits", parent_version=asked, min_clients=1, quorum_wait_s=600)
        run = fleet.training.start_run(spec, actor="test")
        try:
            assert run.spec["parent_version"] == pinned
            assert fleet.store.get_training_run(run.id).spec["parent_version"] == pinned
        finally:
            fleet.training.stop_run(run.id)
