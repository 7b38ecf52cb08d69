"""Federated evaluation figures: per device, per cohort, and the parent-vs-candidate verdict.

The devices evaluate a global model on samples they held out from training
(never sent); their replies carry accuracy, loss and ``num-examples``.  This
module turns those per-device figures into what a round stores (sample-weighted
accuracy, cohorts by a device tag) and judges a candidate on them when the
server has no evaluation data of its own (or the run asks for it).  No I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Figures = Mapping[str, Mapping[str, float]]
"""Device -> its ``accuracy``, ``loss`` and ``num-examples``."""
UNTAGGED = "(untagged)"


def weighted(devices: Figures) -> tuple[float | None, float]:
    """Sample-weighted accuracy of ``devices`` and their held-out sample count."""
    total = sum(m.get("num-examples", 0.0) for m in devices.values())
    if not total:
        return None, 0.0
    hits = sum(m.get("accuracy", 0.0) * m.get("num-examples", 0.0) for m in devices.values())
    return hits / total, total


def summarise(
    metrics: Figures, of_round: int, cohort_of: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """What a round stores: per device, weighted overall and (with ``cohort_of``) per cohort."""
    devices = {
        d: {k: float(m[k]) for k in ("accuracy", "loss", "num-examples") if k in m}
        for d, m in metrics.items()
    }
    accuracy, total = weighted(devices)
    out: dict[str, Any] = {
        "of_round": of_round,
        "accuracy": accuracy,
        "examples": total,
        "devices": devices,
    }
    if cohort_of is not None:
        groups: dict[str, dict[str, dict[str, float]]] = {}
        for d, m in devices.items():
            groups.setdefault(cohort_of(d), {})[d] = m
        cohorts: dict[str, dict[str, Any]] = {}
        for name, members in sorted(groups.items()):
            acc, n = weighted(members)
            cohorts[name] = {"accuracy": acc, "examples": n, "devices": len(members)}
        out["cohorts"] = cohorts
    return out


def verdict(parent: Mapping[str, Any], final: Mapping[str, Any], margin: float) -> dict[str, Any]:
    """Does the final model's federated evaluation beat the parent's (or, with ``margin``
    > 0, trail it by no more than that)?  Only devices that evaluated both count, so the
    two figures are on the same held-out samples."""
    common = sorted(set(parent.get("devices", {})) & set(final.get("devices", {})))
    before, examples = weighted({d: parent["devices"][d] for d in common})
    after, _ = weighted({d: final["devices"][d] for d in common})
    out: dict[str, Any] = {
        "devices": len(common),
        "examples": examples,
        "parent_accuracy": before,
        "accuracy": after,
        "margin": margin,
        "of_round": final.get("of_round"),
    }
    if before is None or after is None:
        return out | {
            "accepted": False,
            "reason": "no device evaluated both the parent and the final model",
        }
    accepted = after >= before - margin if margin > 0 else after > before
    bar = f"at least {before - margin:.4f}" if margin > 0 else f"above {before:.4f}"
    reason = (
        f"federated accuracy {after:.4f} vs parent {before:.4f} on {len(common)} devices' "
        f"{examples:.0f} held-out samples" + ("" if accepted else f"; the candidate needed {bar}")
    )
    return out | {"accepted": accepted, "reason": reason}
