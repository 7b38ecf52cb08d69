"""Label-free accuracy estimate (CBPE) against true accuracy, on shifted inputs.

The shipped ``digits-1.0.0-onnx-int8`` package run by onnxruntime on the
held-out half of scikit-learn's digits (bundled, no download) that it never
trained on; the calibration (:func:`fleet_server.cbpe.calibrate`) is measured
on one half of that held-out set, the estimate made on windows of 300 answers
drawn from the other half with each shift applied, from the ten-bin confidence
histogram a device reports — by :func:`fleet_server.cbpe.estimate`, with that
window's PSI drift score as the agent computes it.  Error is
``|estimate - true accuracy|`` in accuracy points, mean and worst over seeds;
"trusted" is the share of windows where the estimate did not flag itself.
Baseline, same windows: the mean top-1 confidence taken as the accuracy (what
the ``confidence_drop`` gate watches).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from edgefleet_contract.drift import feature_psi
from edgefleet_contract.package import read_package
from fleet_server.cbpe import calibrate, confidence_bins, estimate
from fleet_server.factory_models import DIST
from fleet_server.modelkit.build import run_model
from fleet_server.modelkit.digits import split

PACKAGE = DIST / "digits-1.0.0-onnx-int8.efpkg"
SEEDS = range(10)
WINDOW = 300
Rows = npt.NDArray[np.float32]
Shift = Callable[[Rows, np.random.Generator], Rows]


def _noise(x: Rows, rng: np.random.Generator) -> Rows:
    return np.clip(x + rng.normal(0, 3, x.shape), 0, 16).astype(np.float32)


def _border(x: Rows, rng: np.random.Generator) -> Rows:
    out = x.copy()
    out[:, [0, 8, 16, 24, 32, 40, 48, 56]] = 12.0  # the left column, almost always 0
    return out


SHIFTS: dict[str, Shift] = {
    "none": lambda x, rng: x,
    "additive noise": _noise,
    "brightness": lambda x, rng: np.clip(x + 4, 0, 16).astype(np.float32),
    "inversion": lambda x, rng: (16 - x).astype(np.float32),
    "near-constant features": _border,
}


def _window(
    x: Rows, y: npt.NDArray[np.int64], rng: np.random.Generator, prior: bool
) -> tuple[Rows, npt.NDArray[np.int64]]:
    if prior:  # class-prior shift: four classes in 80% of answers
        weights = np.where(np.isin(y, [1, 3, 8, 9]), 4.0, 0.5)
        pick = rng.choice(len(y), WINDOW, p=weights / weights.sum())
    else:
        pick = rng.choice(len(y), WINDOW)
    return x[pick], y[pick]


def run() -> list[dict[str, object]]:
    pkg = read_package(PACKAGE)
    pre = pkg.manifest.preprocessing

    def predict(raw: Rows) -> npt.NDArray[np.float32]:
        return run_model("onnx", pkg.model_bytes, pre.apply(raw))

    data = split()
    half = np.arange(len(data.y_test)) % 2 == 0
    ref_p = predict(data.x_test[half])
    cal = calibrate(ref_p.max(axis=1), ref_p.argmax(axis=1) == data.y_test[half])
    ex, ey = data.x_test[~half], data.y_test[~half]
    cases = [(name, shift, False) for name, shift in SHIFTS.items()]
    cases.append(("class-prior shift", SHIFTS["none"], True))
    rows: list[dict[str, object]] = []
    for name, shift, prior in cases:
        errors, base, trusted, truth = [], [], [], []
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            wx, wy = _window(ex, ey, rng, prior)
            wx = shift(wx, rng)
            p = predict(wx)
            true = float((p.argmax(axis=1) == wy).mean())
            hist = np.bincount(confidence_bins(p.max(axis=1)), minlength=10).tolist()
            drift = float(feature_psi(pkg.manifest.drift, wx).max())
            est = estimate(hist, cal, drift=drift)
            assert est.accuracy is not None
            errors.append(abs(est.accuracy - true) * 100)
            base.append(abs(float(p.max(axis=1).mean()) - true) * 100)
            trusted.append(est.trusted)
            truth.append(true)
        rows.append(
            {
                "measure": f"label-free estimate error, {name}",
                "value": f"{statistics.fmean(errors):.1f} pt",
                "worst seed": f"{max(errors):.1f} pt",
                "trusted": f"{statistics.fmean(trusted):.0%}",
                "true accuracy": f"{statistics.fmean(truth):.3f}",
                "baseline: mean confidence": f"{statistics.fmean(base):.1f} pt",
                "windows": f"{len(SEEDS)} x {WINDOW} answers",
            }
        )
    return rows
