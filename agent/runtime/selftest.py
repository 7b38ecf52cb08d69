"""The self-test verdict: do this device's outputs match what the builder recorded?

A quantized model can load fine and still compute garbage on a particular
runtime build (FIELD-NOTES: a dynamic-range int8 file scored 10% on
tflite-runtime 2.14).  Loading therefore runs the manifest's vectors and
refuses the model unless every probability is within ``atol`` and enough top-1
classes agree.  Pure numpy, no runtime: the caller supplies the outputs.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edgefleet_contract.errors import SelfTestFailed
from edgefleet_contract.package import SelfTest


def check_self_test(spec: SelfTest, actual: npt.ArrayLike, *, subject: str) -> tuple[float, float]:
    """Raise :class:`SelfTestFailed` naming the worst vector; return (max error, agreement)."""
    expected = np.asarray(spec.expected, dtype=np.float64)
    got = np.asarray(actual, dtype=np.float64)
    if got.shape != expected.shape:
        raise SelfTestFailed(
            f"{subject}: self-test produced outputs of shape {got.shape}, expected {expected.shape}"
        )
    errors = np.where(np.isfinite(got), np.abs(got - expected), np.inf).max(axis=1)
    worst = int(errors.argmax())
    agree = got.argmax(axis=1) == expected.argmax(axis=1)
    agreement = float(agree.mean())
    problems = []
    if errors[worst] > spec.atol:
        over = int((errors > spec.atol).sum())
        problems.append(
            f"vector {worst} differs by {errors[worst]:.3g} (tolerance {spec.atol:g}; "
            f"{over} of {len(errors)} vectors out of tolerance)"
        )
    if agreement < spec.min_top1_agreement:
        first = int(np.flatnonzero(~agree)[0])
        problems.append(
            f"top-1 class agrees on {agree.sum()}/{len(agree)} vectors ({agreement:.0%}, need "
            f"{spec.min_top1_agreement:.0%}); vector {first} gave class "
            f"{int(got[first].argmax())}, expected {int(expected[first].argmax())}"
        )
    if problems:
        raise SelfTestFailed(
            f"{subject} failed its self-test, refusing the model: " + "; ".join(problems)
        )
    return float(errors[worst]), agreement
