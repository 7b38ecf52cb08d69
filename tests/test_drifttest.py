"""The drift statistics on known distributions: calibration, power, effect size, alerts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from agent.drift_monitor import AlertPolicy, AlertState, DriftMonitor
from edgefleet_contract.drift import (
    CompiledReference,
    build_reference,
    feature_psi,
    quantile_reference,
)
from edgefleet_contract.drifttest import benjamini_hochberg, chi2_sf, compare, js_distance
from edgefleet_contract.errors import ModelError


def test_chi2_survival_matches_scipy_where_decisions_are_made() -> None:
    for dof in (1, 2, 3, 4, 5, 9, 20, 35, 100, 257):
        x = stats.chi2.isf([0.5, 0.1, 0.05, 0.01, 1e-3, 1e-4], dof)
        exact = stats.chi2.sf(x, dof)
        approx = chi2_sf(x, np.full(x.size, dof))
        assert np.allclose(approx, exact, rtol=1e-9), (dof, approx, exact)
    assert chi2_sf([5.0], [0])[0] == 1.0


def test_benjamini_hochberg_matches_scipy() -> None:
    p = np.random.default_rng(0).random(50) ** 3
    assert np.allclose(benjamini_hochberg(p), stats.false_discovery_control(p))
    assert benjamini_hochberg(np.array([])).size == 0


def test_js_distance_is_bounded_symmetric_and_does_not_saturate() -> None:
    a = np.array([10.0, 0, 0, 0])
    assert js_distance(a, a * 3) == 0.0
    assert js_distance(a, [0, 0, 0, 5.0]) == pytest.approx(1.0)
    p, q = np.array([3.0, 1, 4, 1]), np.array([5.0, 9, 2, 6])
    assert js_distance(p, q) == pytest.approx(js_distance(q, p))
    # A growing share of the mass moved: the distance keeps growing (PSI stops at ~9.95).
    moved = [js_distance([100, 0], [100 - k, k]) for k in (1, 10, 50, 90, 99, 100)]
    assert moved == sorted(moved) and len(set(moved)) == len(moved)
    with pytest.raises(ModelError, match="bins"):
        js_distance([1, 2], [1, 2, 3])


def _digits_like(rng: np.random.Generator, n: int, *, prior: np.ndarray) -> np.ndarray:
    """64 integer 'pixels' 0..16 whose means depend on a class; borders almost always 0."""
    classes = rng.choice(10, size=n, p=prior)
    centre = np.linspace(1, 14, 10)[classes][:, None] * np.ones(64)
    x = np.clip(np.rint(centre + rng.normal(0, 3, (n, 64))), 0, 16)
    border = np.r_[0:8, 56:64]
    x[:, border] = (rng.random((n, border.size)) < 0.02) * rng.integers(1, 4, (n, border.size))
    return x


def test_false_alarm_rate_is_at_most_alpha_on_small_windows() -> None:
    rng = np.random.default_rng(1)
    prior = np.full(10, 0.1)
    ref = CompiledReference(build_reference(_digits_like(rng, 2000, prior=prior)))
    base = ref.histogram(_digits_like(rng, 1000, prior=prior))
    p = [
        compare(ref.histogram(_digits_like(rng, 200, prior=prior)), base).window_p
        for _ in range(400)
    ]
    assert np.mean(np.array(p) <= 0.01) <= 0.02
    assert np.mean(np.array(p) <= 0.05) <= 0.08


def test_a_change_confined_to_near_constant_features_is_seen_where_psi_is_blind() -> None:
    rng = np.random.default_rng(2)
    prior = np.full(10, 0.1)
    train = _digits_like(rng, 2000, prior=prior)
    live = _digits_like(rng, 200, prior=prior)
    live[:, 0:8] = rng.integers(1, 4, (200, 8)) * (rng.random((200, 8)) < 0.3)
    tests = compare(
        CompiledReference(build_reference(train)).histogram(live),
        CompiledReference(build_reference(train)).reference_counts(),
    )
    assert tests.window_p < 1e-6
    assert set(np.flatnonzero(tests.adjusted <= 0.01)) == set(range(8))
    # The quantile layout puts a 98%-zero pixel in one bin: PSI sees nothing there.
    assert feature_psi(quantile_reference(train), live)[0:8].max() == 0.0


def test_a_mean_shift_is_detected_with_its_size_in_the_effect() -> None:
    rng = np.random.default_rng(3)
    ref = CompiledReference(build_reference(rng.normal(size=(5000, 4))))
    base = ref.histogram(rng.normal(size=(2000, 4)))
    effects = []
    for shift in (0.5, 1.0, 3.0):
        live = rng.normal(size=(200, 4))
        live[:, 2] += shift
        tests = compare(ref.histogram(live), base)
        assert tests.adjusted[2] < 0.01 and int(np.argmin(tests.adjusted)) == 2
        effects.append(tests.effect[2])
    assert effects == sorted(effects)


def test_empty_or_mismatched_histograms() -> None:
    ref = CompiledReference(build_reference(np.random.default_rng(4).normal(size=(100, 3))))
    none = compare(np.zeros((3, ref.bins)), ref.reference_counts())
    assert none.window_p == 1.0 and none.effect.max() == 0.0
    with pytest.raises(ModelError, match="layout"):
        compare(np.zeros((3, 4)), np.zeros((3, 5)))


def test_alert_needs_a_minimum_duration_and_clears_with_hysteresis() -> None:
    state = AlertState(AlertPolicy(raise_after=3, clear_after=2))
    seen = [state.update(d) for d in [True, True, False, True, True, True, False, True, False]]
    assert seen == [False, False, False, False, False, True, True, True, True]
    assert [state.update(False) for _ in range(2)] == [False, False]  # cleared at 2
    with pytest.raises(ModelError, match="alpha"):
        AlertPolicy(alpha=1.5)


def test_burn_in_baseline_persists_per_install(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    reference = build_reference(rng.normal(size=(2000, 3)))
    policy = AlertPolicy(burn_in_rows=400)
    file = tmp_path / "drift-baseline.json"
    own = rng.normal(0.5, 1.0, size=(2000, 3))  # this device's normal differs from training
    monitor = DriftMonitor(reference, policy=policy, baseline_file=file, install="m@1")
    first = monitor.window(own[:200])
    assert first.baseline is None and first.burn_in.rows == 200 and not file.exists()
    monitor.window(own[200:400])
    assert file.exists() and json.loads(file.read_text())["rows"] == 400
    again = DriftMonitor(reference, policy=policy, baseline_file=file, install="m@1")
    report = again.window(own[400:600])
    assert report.baseline is not None and report.baseline.p_value > 0.01
    assert report.reference.p_value < 1e-6  # different from training, normal for itself
    other = DriftMonitor(reference, policy=policy, baseline_file=file, install="m@2")
    assert other.window(own[600:800]).baseline is None  # a new install starts its own burn-in


def test_monitor_alerts_on_a_change_from_the_device_normal_only() -> None:
    rng = np.random.default_rng(6)
    reference = build_reference(rng.normal(size=(2000, 5)))
    monitor = DriftMonitor(reference, policy=AlertPolicy(burn_in_rows=600))

    def own(n: int) -> np.ndarray:
        return rng.normal(0.7, 1.2, size=(n, 5))

    for _ in range(3):
        monitor.window(own(200))
    calm = [monitor.window(own(200)).alert for _ in range(20)]
    assert not any(calm)
    changed = own(200 * 6)
    changed[:, 4] *= -1
    reports = [monitor.window(changed[i : i + 200]) for i in range(0, 1200, 200)]
    assert [r.alert for r in reports][:3] == [False, False, True]
    assert all(r.alert for r in reports[2:])
    assert reports[-1].baseline is not None and reports[-1].baseline.features[0].feature == 4
