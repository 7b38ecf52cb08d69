"""The multivariate drift check: a PCA of the reference catches what per-feature tests cannot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agent.drift_monitor import AlertPolicy, DriftMonitor
from edgefleet_contract.codec import Accepted, Codec
from edgefleet_contract.drift import build_reference
from edgefleet_contract.drifttest import compare
from edgefleet_contract.errors import ModelError
from edgefleet_contract.messages import DriftReport, InferenceStats, Telemetry
from edgefleet_contract.multivariate import (
    PCA_NAME,
    CompiledPca,
    build_pca,
    pca_json,
    read_pca,
)

Rows = npt.NDArray[np.float64]


def correlated(n: int, rng: np.random.Generator, *, flip: bool = False) -> Rows:
    """Six features; the first two strongly correlated (sign flipped with ``flip``).

    Every feature is N(0, 1) either way: flipping the sign of a symmetric feature keeps
    its marginal distribution exactly, only the joint one changes."""
    x = rng.normal(size=(n, 6))
    x[:, 1] = 0.95 * x[:, 0] + np.sqrt(1 - 0.95**2) * x[:, 1]
    if flip:
        x[:, 1] = -x[:, 1]
    return x


REFERENCE = correlated(4000, np.random.default_rng(0))


def _monitor(tmp: Path | None = None, *, pca: bool = True) -> DriftMonitor:
    return DriftMonitor(
        build_reference(REFERENCE),
        policy=AlertPolicy(burn_in_rows=1000),
        pca=build_pca(REFERENCE) if pca else None,
        baseline_file=tmp,
    )


def test_the_pca_keeps_the_shared_direction_and_its_rows_fit_the_reference_bins() -> None:
    pca = build_pca(REFERENCE)
    assert pca is not None
    compiled = CompiledPca(pca)
    # Two correlated + four independent features: the pair needs one component, the
    # independent ones one each, so 90% of the variance takes 5 of the 6.
    assert compiled.components == 5
    basis = np.asarray(pca.components)
    np.testing.assert_allclose(basis @ basis.T, np.eye(5), atol=1e-5)
    stats = compiled.statistics(correlated(2000, np.random.default_rng(1)))
    assert stats.shape == (2000, 2) and (stats >= 0).all()
    # Fresh rows from the reference distribution fall in the bins as the held-out rows did.
    tests = compare(compiled.histogram(stats), compiled.reference_counts())
    assert tests.window_p > 0.01
    assert stats[:, 0].mean() == pytest.approx(pca.error_mean, rel=0.2)


def test_a_correlation_flip_passes_every_feature_test_and_fails_the_pca_one() -> None:
    pca = build_pca(REFERENCE)
    assert pca is not None
    compiled = CompiledPca(pca)
    reference = build_reference(REFERENCE)
    from edgefleet_contract.drift import CompiledReference

    bins = CompiledReference(reference)
    rng = np.random.default_rng(2)
    flipped = correlated(500, rng, flip=True)
    marginal = compare(bins.histogram(flipped), bins.reference_counts())
    joint = compare(compiled.histogram(compiled.statistics(flipped)), compiled.reference_counts())
    assert marginal.window_p > 0.05  # every marginal is unchanged
    assert joint.window_p < 1e-10
    # Positive control for the marginal test: a mean shift of one feature is caught.
    shifted = correlated(500, rng)
    shifted[:, 3] += 0.5
    assert compare(bins.histogram(shifted), bins.reference_counts()).window_p < 1e-6


def test_the_device_alerts_on_a_correlation_change_with_the_usual_minimum_duration() -> None:
    rng = np.random.default_rng(3)
    joint, marginal_only = _monitor(), _monitor(pca=False)
    for _ in range(5):  # burn-in: 1,000 rows
        rows = correlated(200, rng)
        joint.window(rows)
        marginal_only.window(rows)
    assert joint.baseline_ready and joint.multivariate and not marginal_only.multivariate
    clean = joint.window(correlated(200, rng))
    assert not clean.alert and clean.multivariate is not None
    assert clean.multivariate.baseline is not None and clean.multivariate.components == 5
    reports = []
    for _ in range(3):
        rows = correlated(200, rng, flip=True)
        reports.append(joint.window(rows))
        assert not marginal_only.window(rows).alert
    assert [r.alert for r in reports] == [False, False, True]  # raise_after = 3 windows
    last = reports[-1].multivariate
    assert last is not None and last.baseline is not None
    assert last.baseline.p_value < 1e-6 and last.baseline.effect > 0.3
    assert last.baseline.error_ratio is not None and last.baseline.error_ratio > 2
    assert {s.name for s in last.baseline.statistics} == {"spe", "t2"}
    assert len(reports[-1].multivariate.histograms) == 2  # type: ignore[union-attr]
    for _ in range(3):  # back to normal: hysteresis clears after clear_after windows
        report = joint.window(correlated(200, rng))
    assert not report.alert


def test_the_baseline_with_its_pca_histograms_survives_a_restart(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    path = tmp_path / "drift-baseline.json"
    first = _monitor(path)
    for _ in range(5):
        first.window(correlated(200, rng))
    doc = json.loads(path.read_text())
    assert len(doc["mv_counts"]) == 2 and doc["mv_error_sum"] > 0
    again = _monitor(path)
    assert again.baseline_ready
    report = again.window(correlated(200, rng))
    assert report.multivariate is not None and report.multivariate.baseline is not None
    # A monitor without the PCA (a package that ships none) is another baseline.
    assert not _monitor(path, pca=False).baseline_ready


def test_a_report_with_the_pca_check_round_trips_and_old_reports_still_read() -> None:
    rng = np.random.default_rng(5)
    monitor = _monitor()
    for _ in range(6):
        report = monitor.window(correlated(200, rng))
    batch = Telemetry(
        device_id="d1",
        batch_id="b1",
        seq=1,
        ts=1.0,
        window_s=10.0,
        inference=InferenceStats(model="m", version="1", count=1, errors=0, throughput_per_s=1),
        drift=report,
    )
    codec = Codec()
    got = codec.decode("devices/d1/telemetry", codec.encode(batch))
    assert isinstance(got, Accepted) and isinstance(got.message, Telemetry)
    assert got.message.drift == report
    without = report.model_copy(update={"multivariate": None})
    wire = json.loads(codec.encode(batch.model_copy(update={"drift": without})))
    assert "multivariate" not in wire["drift"]  # what a server from before reads
    assert isinstance(DriftReport.model_validate(wire["drift"]), DriftReport)


def test_package_member_reads_back_and_a_broken_one_says_what_is_wrong() -> None:
    pca = build_pca(REFERENCE)
    assert pca is not None
    assert read_pca({PCA_NAME: pca_json(pca)}) == pca
    assert read_pca({}) is None
    with pytest.raises(ModelError, match=PCA_NAME):
        read_pca({PCA_NAME: b"{not json"})
    doc = json.loads(pca_json(pca))
    doc["scale"] = doc["scale"][:-1]
    with pytest.raises(ModelError, match="scale"):
        read_pca({PCA_NAME: json.dumps(doc).encode()})


def test_no_pca_where_it_cannot_help() -> None:
    rng = np.random.default_rng(6)
    assert build_pca(rng.normal(size=(500, 1))) is None  # one feature: marginal tests suffice
    assert build_pca(rng.normal(size=(10, 4))) is None  # too few rows to fit anything
    with pytest.raises(ModelError):
        build_pca(np.array([[1.0, np.nan]] * 50))


def test_a_pca_of_another_width_is_ignored_not_fatal() -> None:
    pca = build_pca(np.random.default_rng(7).normal(size=(500, 3)))
    monitor = DriftMonitor(build_reference(REFERENCE), pca=pca)
    assert not monitor.multivariate
    assert monitor.window(REFERENCE[:200]).multivariate is None


def test_non_finite_rows_land_in_the_missing_bin() -> None:
    pca = build_pca(REFERENCE)
    assert pca is not None
    compiled = CompiledPca(pca)
    rows = correlated(100, np.random.default_rng(8))
    rows[:10, 2] = np.nan
    hist = compiled.histogram(compiled.statistics(rows))
    assert hist[:, -1].tolist() == [10, 10] and hist.sum() == 200
