"""Digits packages as the benchmarks build them: one recipe (the digits preprocessing and
labels, the training split as drift reference and calibration rows, a build lineage), so
that the sizes and deltas the benchmarks report come from packages made alike."""

from __future__ import annotations

from edgefleet_contract.package import Lineage
from fleet_server.modelkit import Network
from fleet_server.modelkit.build import Flavor, build_package
from fleet_server.modelkit.digits import LABELS, PREPROCESSING, split


def digits_package(
    network: Network,
    *,
    name: str,
    version: str,
    flavor: Flavor,
    run_id: str,
    created_at: float,
    trainable: bool = True,
) -> bytes:
    """``network`` packaged; ``created_at`` is fixed by the caller so that one network
    built twice gives the same bytes (a delta between versions then measures the weights)."""
    return build_package(
        network,
        name=name,
        version=version,
        flavor=flavor,
        preprocessing=PREPROCESSING,
        labels=LABELS,
        reference=split().x_train,
        lineage=Lineage(source="build", run_id=run_id),
        trainable=trainable,
        created_at=created_at,
    )
