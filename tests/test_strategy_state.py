"""A strategy's server state survives a checkpoint: saved, restored, refused if it does not fit."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
)

from edgefleet_contract.errors import FederationError
from fleet_server.federation import strategy_state


def test_moments_momentum_and_clipping_norm_round_trip() -> None:
    rng = np.random.default_rng(1)
    adam = FedAdam()
    adam.m_t = {"w": rng.normal(size=(3, 2)), "b/x": rng.normal(size=2)}
    adam.v_t = {"w": rng.random((3, 2)), "b/x": rng.random(2)}
    wrapped = DifferentialPrivacyServerSideAdaptiveClipping(adam, 0.1, 40)
    wrapped.clipping_norm = 3.25
    blob = strategy_state.save(wrapped, extra={"dp_releases": 7})

    fresh = DifferentialPrivacyServerSideAdaptiveClipping(FedAdam(), 0.1, 40)
    assert strategy_state.restore(fresh, blob) == {"dp_releases": 7}
    inner = fresh.strategy
    assert isinstance(inner, FedAdam) and inner.m_t is not None and inner.v_t is not None
    for name in ("w", "b/x"):
        np.testing.assert_array_equal(inner.m_t[name], adam.m_t[name])
        np.testing.assert_array_equal(inner.v_t[name], adam.v_t[name])
    assert fresh.clipping_norm == 3.25

    momentum = FedAvgM(server_momentum=0.9)
    momentum.momentum_vector = [np.ones(3), np.zeros((2, 2))]
    again = FedAvgM(server_momentum=0.9)
    strategy_state.restore(again, strategy_state.save(momentum))
    assert again.momentum_vector is not None and len(again.momentum_vector) == 2
    np.testing.assert_array_equal(again.momentum_vector[0], np.ones(3))


def test_state_of_another_strategy_is_refused_and_empty_state_restores_nothing() -> None:
    blob = strategy_state.save(FedAdam())
    with pytest.raises(FederationError, match="spec it started with"):
        strategy_state.restore(FedAvg(), blob)
    with pytest.raises(FederationError, match="unreadable"):
        strategy_state.restore(FedAdam(), b"not an npz")
    assert strategy_state.restore(FedAdam(), b"") == {}
