"""Drift references and PSI: the numerics both the agent and the server rely on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgefleet_contract.drift import (
    CompiledReference,
    DriftReference,
    build_reference,
    feature_psi,
    psi,
)
from edgefleet_contract.errors import ModelError

histograms = st.integers(2, 12).flatmap(
    lambda n: st.tuples(
        hnp.arrays(np.float64, n, elements=st.floats(0, 1e6)),
        hnp.arrays(np.float64, n, elements=st.floats(0, 1e6)),
    )
)


@settings(max_examples=200, deadline=None)
@given(histograms)
def test_psi_is_non_negative_symmetric_and_scale_free(pair: tuple[np.ndarray, np.ndarray]) -> None:
    e, a = pair
    value = psi(e, a)
    assert np.isfinite(value) and value >= 0.0
    assert value == pytest.approx(psi(a, e), rel=1e-9, abs=1e-12)
    assert psi(e * 7.0, a * 3.0) == pytest.approx(value, rel=1e-9, abs=1e-12)
    assert psi(e, e) == 0.0


def test_psi_grows_with_the_shift_and_stays_finite_on_empty_bins() -> None:
    base = np.array([0.25, 0.25, 0.25, 0.25])
    small = psi(base, [0.3, 0.25, 0.25, 0.2])
    large = psi(base, [0.7, 0.1, 0.1, 0.1])
    extreme = psi(base, [1.0, 0.0, 0.0, 0.0])
    assert 0 < small < large < extreme < 50
    assert psi([0, 0, 0], [1, 2, 3]) == 0.0  # no reference evidence: no claim of drift
    with pytest.raises(ModelError):
        psi([0.5, 0.5], [1.0])


def test_reference_from_training_data() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack(
        [
            rng.normal(size=5000),  # continuous: 10 bins
            rng.integers(0, 2, size=5000),  # binary: nine quantiles collapse to two edges
            np.full(5000, 3.0),  # constant
        ]
    )
    ref = build_reference(x, bins=10)
    assert ref.samples == 5000
    continuous, binary, constant = ref.features
    # Nine quantile edges plus one at each end of the seen range: the out-of-range bins
    # are empty, so values outside what training saw show up as drift.
    assert len(continuous.edges) == 11
    assert continuous.expected[0] == 0.0 and continuous.expected[-1] == 0.0
    assert all(p == pytest.approx(0.1, abs=0.01) for p in continuous.expected[1:-1])
    # Discrete values get value-level bins [v - d, v + d), the gaps between them their own.
    assert binary.edges == pytest.approx([0.0, 0.0, 1.0, 1.0], abs=1e-5)
    assert binary.expected[0::2] == [0.0, 0.0, 0.0]
    assert binary.expected[1] == pytest.approx(0.5, abs=0.03)
    assert constant.edges == pytest.approx([3.0, 3.0], abs=1e-5)
    assert constant.expected == [0.0, 1.0, 0.0]
    # Training data scored against its own reference shows no drift at all.
    assert feature_psi(ref, x) == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    # The reference survives the package format (JSON) unchanged.
    again = DriftReference.model_validate_json(ref.model_dump_json())
    assert again == ref


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
        elements=st.floats(-1e9, 1e9),
    ),
    st.integers(2, 20),
)
def test_any_finite_matrix_gives_a_valid_reference(x: np.ndarray, bins: int) -> None:
    ref = build_reference(x, bins=bins)  # the pydantic validators re-check every invariant
    assert len(ref.features) == x.shape[1]
    for f in ref.features:
        assert len(f.edges) <= 255
    assert np.all(feature_psi(ref, x) < 1e-9)


def test_detects_a_shift_and_not_noise() -> None:
    rng = np.random.default_rng(1)
    ref = build_reference(rng.normal(size=(20_000, 4)))
    compiled = CompiledReference(ref)
    same = rng.normal(size=(2000, 4))
    shifted = same.copy()
    shifted[:, 2] += 1.0
    assert compiled.feature_psi(same).max() < 0.1
    scores = compiled.feature_psi(shifted)
    assert scores[2] > 0.25
    assert int(np.argmax(scores)) == 2


def test_non_finite_live_values_count_as_drift() -> None:
    rng = np.random.default_rng(2)
    ref = build_reference(rng.normal(size=(2000, 2)))
    live = rng.normal(size=(500, 2))
    live[:100, 1] = np.nan
    counts = CompiledReference(ref).bin_counts(live)
    assert counts[1][-1] == 100 and counts[0][-1] == 0
    scores = feature_psi(ref, live)
    assert scores[1] > 0.25 > scores[0]


def test_bad_inputs_are_refused_with_a_reason() -> None:
    ref = build_reference(np.arange(20.0).reshape(10, 2))
    with pytest.raises(ModelError, match="2 features"):
        feature_psi(ref, np.zeros((3, 5)))
    with pytest.raises(ModelError, match="NaN"):
        build_reference(np.array([[1.0], [np.nan]]))
    with pytest.raises(ModelError, match="matrix"):
        build_reference(np.zeros(5))
    with pytest.raises(ModelError, match="bins"):
        build_reference(np.zeros((5, 1)), bins=1)
    # A single row is a valid input, as a 1-D vector.
    assert feature_psi(ref, np.array([1.0, 2.0])).shape == (2,)


def test_trimmed_histograms_drop_exactly_the_trailing_zeros() -> None:
    from agent.drift_monitor import _trimmed

    rng = np.random.default_rng(7)
    for _ in range(200):
        rows, cols = int(rng.integers(0, 6)), int(rng.integers(0, 9))
        hist = (rng.integers(0, 3, (rows, cols)) * (rng.random((rows, 1)) > 0.2)).astype(np.int64)
        assert _trimmed(hist) == [np.trim_zeros(row, "b").tolist() for row in hist]
