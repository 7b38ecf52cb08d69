"""The label-free accuracy estimate: calibration, pooling, its interval and its trust checks."""

from __future__ import annotations

import numpy as np
import pytest

from fleet_server.cbpe import Calibration, calibrate, confidence_bins, estimate


def test_a_calibrated_model_is_estimated_at_its_accuracy() -> None:
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.5, 1.0, 20_000)
    right = rng.random(20_000) < conf  # calibrated: right as often as it is confident
    cal = calibrate(conf[:10_000], right[:10_000])
    hist = np.bincount(confidence_bins(conf[10_000:]), minlength=10).tolist()
    est = estimate(hist, cal)
    assert est.trusted and est.accuracy is not None and est.low is not None
    assert est.accuracy == pytest.approx(right[10_000:].mean(), abs=0.01)
    assert est.low < right[10_000:].mean() < (est.high or 0)


def test_an_overconfident_model_is_corrected_by_its_calibration() -> None:
    cal = Calibration(counts=(0,) * 9 + (1000,), correct=(0,) * 9 + (700,))
    est = estimate([0] * 9 + [500], cal)
    assert est.accuracy == pytest.approx(0.7)  # not the 0.95 its confidence says


def test_thin_bins_are_pooled_and_empty_ones_flag_the_estimate() -> None:
    cal = Calibration(
        counts=(0, 0, 0, 0, 6, 4, 6, 6, 14, 144), correct=(0, 0, 0, 0, 3, 4, 3, 5, 12, 143)
    )
    rates = cal.rates()
    assert rates[4] == rates[5] == pytest.approx(7 / 10)  # pooled to reach 10 answers
    assert rates[9] == pytest.approx(143 / 144)
    est = estimate([50, 50, 0, 0, 0, 0, 0, 0, 0, 100], cal)
    assert not est.trusted and "never visited" in est.reasons[0]


def test_the_estimate_says_when_it_cannot_be_trusted() -> None:
    cal = Calibration(counts=(100,) * 10, correct=(50,) * 10)
    assert estimate([1] * 10, cal).reasons == ("only 10 answers (needs 100)",)
    drifted = estimate([100] * 10, cal, drift=0.6)
    assert not drifted.trusted and "drifted" in drifted.reasons[0]
    assert estimate([0] * 10, cal).accuracy is None
    assert not estimate([10] * 5, cal).trusted  # another binning


def test_a_calibration_round_trips_and_refuses_nonsense() -> None:
    cal = Calibration(counts=(5, 10), correct=(1, 9))
    assert Calibration.from_json(cal.to_json()) == cal
    with pytest.raises(ValueError, match="correct"):
        Calibration.from_json({"counts": [1], "correct": [2]})
