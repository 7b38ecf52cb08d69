"""Drift of a device's inputs: against the package reference and against its own normal.

Devices are legitimately different (their own classes, their own camera), so a
window is tested twice and reported separately (:class:`DriftReport`):

* against the **package reference**: how this device differs from the training
  data (useful for fleet views, never an alert on its own);
* against the device's **burn-in baseline**: the histograms of the first
  ``burn_in_rows`` scored rows after each install of a model version, persisted
  beside the agent's state so a restart does not learn a new "normal".

The alert is "changed from this device's normal": a window counts as drifted when
its baseline p-value (Benjamini-Hochberg across features) is at most ``alpha`` and
its effect is at least ``min_effect``; the alert rises after ``raise_after``
drifted windows in a row (minimum duration) and clears only after ``clear_after``
windows in a row that are not (hysteresis), so one odd window neither raises nor
clears it.

When the package ships a PCA reference (:mod:`edgefleet_contract.multivariate`) each
window is also tested on how its features move together: the per-row reconstruction
error and T^2 histograms against the reference and the baseline.  A window is drifted
when either family is significant, Bonferroni across the two (each at ``alpha / 2``), so
the per-window false-alarm rate stays at ``alpha``; the same minimum duration and
hysteresis apply.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgefleet_contract.drift import CompiledReference, DriftReference
from edgefleet_contract.drifttest import FeatureTests, compare
from edgefleet_contract.errors import ModelError
from edgefleet_contract.messages import (
    BurnIn,
    DriftReport,
    DriftTest,
    FeatureTest,
    MultivariateReport,
    MultivariateTest,
    StatisticTest,
)
from edgefleet_contract.multivariate import STATISTICS, CompiledPca, PcaReference

log = logging.getLogger(__name__)

MAX_HISTOGRAM_FEATURES = 4096
"""Wider inputs are still tested; only their histograms stay off the wire."""


@dataclass(frozen=True)
class AlertPolicy:
    alpha: float = 0.01
    min_effect: float = 0.0
    raise_after: int = 3
    clear_after: int = 3
    burn_in_rows: int = 2000

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ModelError(f"drift alpha must be between 0 and 1, got {self.alpha}")
        if not 0 <= self.min_effect <= 1:
            raise ModelError(f"drift min_effect must be between 0 and 1, got {self.min_effect}")
        if self.raise_after < 1 or self.clear_after < 1 or self.burn_in_rows < 1:
            raise ModelError("drift raise_after, clear_after and burn_in_rows must be at least 1")


def _trimmed(hist: npt.NDArray[np.int64]) -> list[list[int]]:
    """Rows without their trailing zeros (narrow features, no non-finite values): about a
    third fewer bytes; the server pads them back (:func:`fleet_server.cohorts.padded`)."""
    if hist.size == 0:
        return [[] for _ in range(len(hist))]
    nonzero = hist != 0
    # each row's length up to its last non-zero count (0 for an all-zero row)
    lengths = np.where(nonzero.any(axis=1), hist.shape[1] - np.argmax(nonzero[:, ::-1], axis=1), 0)
    return [row[:n] for row, n in zip(hist.tolist(), lengths.tolist(), strict=True)]


class AlertState:
    """Minimum duration to raise, hysteresis to clear: a pure state machine."""

    def __init__(self, policy: AlertPolicy) -> None:
        self.policy = policy
        self.alerting = False
        self.streak = 0

    def update(self, drifted: bool) -> bool:
        """Feed one window's verdict; returns whether the device is alerting now."""
        if drifted != self.alerting:
            self.streak += 1
            needed = self.policy.clear_after if self.alerting else self.policy.raise_after
            if self.streak >= needed:
                self.alerting, self.streak = drifted, 0
        else:
            self.streak = 0
        return self.alerting


def baseline_key(reference: DriftReference, install: str, pca: PcaReference | None = None) -> str:
    """What a persisted baseline belongs to: this reference (and PCA), on this install."""
    digest = hashlib.sha256(install.encode() + b"\0")
    digest.update(reference.model_dump_json().encode())
    if pca is not None:
        digest.update(b"\0" + pca.model_dump_json().encode())
    return digest.hexdigest()


@dataclass
class _Multivariate:
    """The PCA side of a monitor: its reference counts and its share of the baseline."""

    pca: CompiledPca
    reference: npt.NDArray[np.float64]
    baseline: npt.NDArray[np.float64]
    error_sum: float = 0.0

    def window(self, rows: npt.ArrayLike) -> tuple[npt.NDArray[np.int64], float | None, float]:
        """The window's statistics histogram, its mean error, and its summed error."""
        stats = self.pca.statistics(rows)
        spe = stats[:, 0]
        finite = spe[np.isfinite(spe)]
        mean = float(finite.mean()) if finite.size else None
        return self.pca.histogram(stats), mean, float(finite.sum())


class DriftMonitor:
    """Tests each window's rows; holds the baseline and the alert state of one model."""

    def __init__(
        self,
        reference: DriftReference,
        *,
        policy: AlertPolicy | None = None,
        baseline_file: Path | None = None,
        install: str = "",
        top_features: int = 10,
        pca: PcaReference | None = None,
    ) -> None:
        """``install`` names the installed model (e.g. ``name@version``): a baseline
        persisted for another install is ignored and a new burn-in starts.  ``pca`` (the
        package's ``drift-pca.json``) adds the multivariate test."""
        self.reference = CompiledReference(reference)
        self.policy = policy or AlertPolicy()
        if pca is not None and pca.width != self.reference.width:
            log.warning(
                "the package's PCA reference describes %d features, its drift reference %d: "
                "no multivariate drift test",
                pca.width,
                self.reference.width,
            )
            pca = None
        self._mv: _Multivariate | None = None
        if pca is not None:
            compiled = CompiledPca(pca)
            counts = compiled.reference_counts()
            self._mv = _Multivariate(compiled, counts, np.zeros_like(counts))
        self._digest = baseline_key(reference, install, pca)
        self._ref_counts = self.reference.reference_counts()
        self._file = baseline_file
        self._top = top_features
        self._state = AlertState(self.policy)
        self._baseline = np.zeros_like(self._ref_counts)
        self._baseline_rows = 0
        self._load()

    @property
    def multivariate(self) -> bool:
        """Whether windows are also tested with the package's PCA."""
        return self._mv is not None

    @property
    def baseline_ready(self) -> bool:
        return self._baseline_rows >= self.policy.burn_in_rows

    def window(self, rows: npt.ArrayLike) -> DriftReport:
        """Histogram, test and (once the burn-in is done) judge one window of rows."""
        hist = self.reference.histogram(rows)
        samples = int(hist[0].sum())
        vs_ref = self._test(compare(hist, self._ref_counts))
        vs_base: DriftTest | None = None
        mv = self._mv
        mv_hist, mv_mean, mv_sum = mv.window(rows) if mv is not None else (None, None, 0.0)
        mv_report: MultivariateReport | None = None
        if mv is not None and mv_hist is not None:
            mv_report = MultivariateReport(
                method="pca",
                components=mv.pca.components,
                reference=_mv_test(compare(mv_hist, mv.reference), mv_mean, mv.pca.error_mean),
                histograms=_trimmed(mv_hist),
            )
        if self.baseline_ready:
            tests = compare(hist, self._baseline)
            vs_base = self._test(tests)
            p, effect = tests.window_p, vs_base.effect
            if mv is not None and mv_hist is not None and mv_report is not None:
                base_mean = mv.error_sum / max(self._baseline_rows, 1)
                mv_base = _mv_test(compare(mv_hist, mv.baseline), mv_mean, base_mean)
                mv_report = mv_report.model_copy(update={"baseline": mv_base})
                # Bonferroni across the two families: the window's false-alarm rate stays alpha.
                p = min(1.0, 2.0 * min(p, mv_base.p_value))
                effect = max(effect, mv_base.effect)
            self._state.update(p <= self.policy.alpha and effect >= self.policy.min_effect)
        else:
            self._baseline += hist
            self._baseline_rows += samples
            if mv is not None and mv_hist is not None:
                mv.baseline += mv_hist
                mv.error_sum += mv_sum
            if self.baseline_ready:
                self._save()
        return DriftReport(
            method="chi2",
            samples=samples,
            alpha=self.policy.alpha,
            reference=vs_ref,
            baseline=vs_base,
            burn_in=BurnIn(
                rows=min(self._baseline_rows, self.policy.burn_in_rows),
                needed=self.policy.burn_in_rows,
            ),
            alert=self._state.alerting,
            alert_windows=self._state.streak,
            histograms=_trimmed(hist) if hist.shape[0] <= MAX_HISTOGRAM_FEATURES else [],
            multivariate=mv_report,
        )

    def _test(self, tests: FeatureTests) -> DriftTest:
        order = np.lexsort((-tests.effect, tests.adjusted))[: self._top]
        return DriftTest(
            p_value=tests.window_p,
            effect=min(1.0, float(tests.effect.max())) if tests.effect.size else 0.0,
            drifted=tests.drifted(self.policy.alpha),
            features=[
                FeatureTest(
                    feature=int(j),
                    p_value=float(tests.adjusted[j]),
                    effect=min(1.0, float(tests.effect[j])),
                )
                for j in order
            ],
        )

    # ------------------------------------------------------- persistence --

    def _load(self) -> None:
        if self._file is None or not self._file.exists():
            return
        try:
            doc = json.loads(self._file.read_text())
            counts = np.asarray(doc["counts"], dtype=np.float64)
            if doc.get("reference") != self._digest or counts.shape != self._baseline.shape:
                return  # another model's baseline: this install starts its own burn-in
            if self._mv is not None:
                mv_counts = np.asarray(doc["mv_counts"], dtype=np.float64)
                if mv_counts.shape != self._mv.baseline.shape:
                    return
                self._mv.baseline, self._mv.error_sum = mv_counts, float(doc["mv_error_sum"])
            self._baseline, self._baseline_rows = counts, int(doc["rows"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "drift baseline %s unreadable (%s): starting a new burn-in", self._file, exc
            )

    def _save(self) -> None:
        if self._file is None:
            return
        doc: dict[str, object] = {
            "reference": self._digest,
            "rows": self._baseline_rows,
            "counts": self._baseline.astype(np.int64).tolist(),
        }
        if self._mv is not None:
            doc["mv_counts"] = self._mv.baseline.astype(np.int64).tolist()
            doc["mv_error_sum"] = self._mv.error_sum
        tmp = self._file.with_suffix(".tmp")
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self._file)
        except OSError as exc:
            log.warning("could not persist the drift baseline to %s: %s", self._file, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()


def _mv_test(tests: FeatureTests, mean: float | None, other_mean: float) -> MultivariateTest:
    ratio = mean / other_mean if mean is not None and other_mean > 0 else None
    return MultivariateTest(
        p_value=tests.window_p,
        effect=min(1.0, float(tests.effect.max())),
        error_ratio=min(ratio, 1e12) if ratio is not None else None,
        statistics=[
            StatisticTest(
                name=name,  # type: ignore[arg-type]
                p_value=float(tests.adjusted[i]),
                effect=min(1.0, float(tests.effect[i])),
            )
            for i, name in enumerate(STATISTICS)
        ],
    )
