"""Model cards: what a registered version is, where it came from and how it does in the fleet.

The layout follows the Model Card Toolkit's schema (``model_details``,
``model_parameters``, ``quantitative_analysis``, ``considerations``) so a card
can be read by tools that know it, plus an ``edge`` section for what matters
on devices: runtime and opset, int8-vs-float agreement, latency and memory per
hardware class as the fleet measured them, the drift reference's hash and the
federated run a version came from.

Two halves: :func:`package_facts` is taken from a package once, when it is
registered (kept beside its blob, see :class:`~.cards.CardStore`), and
:func:`build` joins every flavour's facts with the registry row, the training
run and the fleet's figures when a card is asked for.  Both are pure; the
fleet figures are gathered in :mod:`.cards`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgefleet_contract.package import ModelPackage

from ..cbpe import CALIBRATION_NAME, Calibration, estimate
from ..rollouts import champion
from ..store.base import Artifact

SCHEMA = "edgefleet-model-card/1"
Z95 = champion.z_of(0.975)


def _opset(pkg: ModelPackage) -> int | None:
    """The default-domain opset of an ONNX model (None for TFLite, or if unreadable)."""
    if pkg.manifest.runtime != "onnx":
        return None
    try:
        import onnx

        model = onnx.load_from_string(pkg.model_bytes)
    except Exception:  # a package the device runtime accepted; the card just lacks the opset
        return None
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def package_facts(pkg: ModelPackage) -> dict[str, Any]:
    """The facts a card needs from one package (one flavour), taken at registration."""
    m = pkg.manifest
    expected = np.asarray(m.self_test.expected, dtype=np.float64)
    calibration = None
    if CALIBRATION_NAME in pkg.members:
        try:
            calibration = Calibration.from_json(json.loads(pkg.members[CALIBRATION_NAME])).to_json()
        except (ValueError, KeyError, TypeError):  # the card says there is none to use
            calibration = None
    return {
        "calibration": calibration,
        "flavor": m.flavor,
        "runtime": m.runtime,
        "opset": _opset(pkg),
        "quantization": m.quantization.model_dump(exclude_none=True),
        "inputs": [t.model_dump(exclude_none=True) for t in m.inputs],
        "outputs": [t.model_dump(exclude_none=True) for t in m.outputs],
        "labels": [str(label) for label in m.labels],
        "model_bytes": len(pkg.model_bytes),
        "drift_reference_sha256": _digest(m.drift.model_dump(mode="json")),
        "lineage": m.lineage.model_dump(exclude_none=True),
        "created_at": str(m.created_at),
        "self_test": {
            "vectors": len(m.self_test.inputs),
            "inputs_sha256": _digest(m.self_test.inputs),
            "top1": [int(i) for i in expected.argmax(axis=1)],
        },
    }


def int8_agreement(facts: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Top-1 agreement of the int8 flavour with the float network.

    The builder's own measurement, over its reference rows, when the package
    records it (``quantization.agreement``); else a comparison of the int8 and
    float flavours' self-test outputs, when both carry the same vectors (each was
    produced by its own runtime, so neither model is run here).
    """
    for f in facts:
        record = f["quantization"].get("agreement") or {}
        if record.get("outputs"):
            top1 = min(float(o["top1"]) for o in record["outputs"])
            return {"agreement": top1, "vectors": int(record["samples"]), "source": "builder"}
    by_dtype = {f["quantization"]["dtype"]: f for f in facts}
    q, fl = by_dtype.get("int8"), by_dtype.get("float32")
    if q is None or fl is None:
        return None
    a, b = q["self_test"], fl["self_test"]
    if a["inputs_sha256"] != b["inputs_sha256"] or not a["top1"]:
        return {"agreement": None, "vectors": 0, "note": "the flavours carry different vectors"}
    same = sum(x == y for x, y in zip(a["top1"], b["top1"], strict=True))
    return {"agreement": same / len(a["top1"]), "vectors": len(a["top1"]), "source": "self-test"}


def wilson(correct: int, n: int) -> tuple[float | None, float | None]:
    """The 95% Wilson score interval of an accuracy (None, None without labels)."""
    if n <= 0:
        return None, None
    return champion.wilson(correct, n, Z95)


def provenance(lineage: Mapping[str, Any], run: Mapping[str, Any] | None) -> dict[str, Any]:
    """Where the weights came from; for a federated version, the run that made them."""
    out: dict[str, Any] = {
        "source": lineage.get("source"),
        "parent": lineage.get("parent"),
        "run_id": lineage.get("run_id"),
    }
    if run is not None:
        spec = run.get("spec") or {}
        privacy = spec.get("privacy") or {}
        eps = privacy.get("local_dp_epsilon") or None
        out |= {
            "strategy": spec.get("strategy"),
            "rounds": run.get("completed_rounds"),
            "rounds_planned": spec.get("rounds"),
            "clients": run.get("clients"),
            "min_clients": spec.get("min_clients"),
            "dp": {
                "local_epsilon": eps,
                "central": bool(privacy.get("central_dp")),
                "noise_multiplier": privacy.get("noise_multiplier")
                if privacy.get("central_dp")
                else None,
            },
            "held_out_accuracy": (run.get("result") or {}).get("accuracy"),
        }
    return out


def build(
    name: str,
    version: str,
    artifacts: Sequence[Artifact],
    facts: Sequence[Mapping[str, Any]],
    *,
    run: Mapping[str, Any] | None = None,
    fleet: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The card of ``name@version`` from its flavours' rows and facts and the fleet figures."""
    first = artifacts[0]
    fleet = dict(fleet or {})
    lineage = dict(first.lineage)
    labels = facts[0]["labels"] if facts else []
    return {
        "schema": SCHEMA,
        "model_details": {
            "name": name,
            "version": {"name": version, "date": facts[0]["created_at"] if facts else None},
            "overview": f"{name} {version}: classifies into {len(labels)} labels on the device",
            "owners": [{"name": first.uploaded_by}],
            "registered_at": min(a.created_at for a in artifacts),
            "references": [a.target_path for a in artifacts],
            "lineage": lineage,
        },
        "model_parameters": {
            "model_architecture": facts[0]["runtime"] if facts else first.runtime,
            "input_format": facts[0]["inputs"] if facts else [],
            "output_format": facts[0]["outputs"] if facts else [],
            "labels": labels,
            "flavors": [
                {
                    "flavor": f["flavor"],
                    "quantization": f["quantization"],
                    "model_bytes": f["model_bytes"],
                    "sha256": a.sha256,
                }
                for a, f in zip(artifacts, facts, strict=True)
            ],
        },
        "quantitative_analysis": {
            "performance_metrics": fleet.get("overall", []),
            "estimated_accuracy": label_free(facts, fleet),
            "slices": fleet.get("slices", []),
            "timeline": fleet.get("timeline", []),
            "slice_timelines": fleet.get("slice_timelines", {}),
            "window": fleet.get("window"),
        },
        "considerations": {
            "use_cases": [f"on-device classification into: {', '.join(labels[:20])}"],
            "limitations": _limitations(fleet),
            "ethical_considerations": [
                {
                    "name": "per-slice accuracy",
                    "mitigation_strategy": "compare the slices' intervals below; a slice whose "
                    "upper bound is under another's lower bound is served worse",
                }
            ],
        },
        "edge": {
            "runtimes": [
                {"flavor": f["flavor"], "runtime": f["runtime"], "opset": f["opset"]} for f in facts
            ],
            "int8_vs_float": int8_agreement(facts),
            "hardware": fleet.get("hardware", []),
            "drift_reference_sha256": sorted({f["drift_reference_sha256"] for f in facts}),
            "provenance": provenance(lineage, run),
            "devices_running": fleet.get("devices", 0),
        },
    }


def label_free(facts: Sequence[Mapping[str, Any]], fleet: Mapping[str, Any]) -> dict[str, Any]:
    """The CBPE estimate (:mod:`fleet_server.cbpe`) of the fleet's answers, or why there is none.

    The calibration is the first flavour's that carries one (the flavours of a
    version are one network, quantized or not).
    """
    table = next((f["calibration"] for f in facts if f.get("calibration")), None)
    if table is None:
        return {"accuracy": None, "trusted": False, "reasons": ["the package has no calibration"]}
    est = estimate(
        fleet.get("confidence_hist") or [0] * len(table["counts"]),
        Calibration.from_json(table),
        drift=fleet.get("drift_max"),
    )
    return {
        "method": "CBPE",
        "accuracy": est.accuracy,
        "low": est.low,
        "high": est.high,
        "answers": est.answers,
        "trusted": est.trusted,
        "reasons": list(est.reasons),
    }


def _limitations(fleet: Mapping[str, Any]) -> list[dict[str, str]]:
    out = []
    if not fleet.get("labels"):
        out.append({"description": "no feedback labels from the fleet yet: accuracy unmeasured"})
    worst = fleet.get("worst_slice")
    if worst:
        out.append({"description": f"lowest measured accuracy on slice {worst}"})
    return out


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def markdown(card: Mapping[str, Any]) -> str:
    """The card as Markdown, for people and for pasting into a review."""
    d, p, q, e = (
        card[k] for k in ("model_details", "model_parameters", "quantitative_analysis", "edge")
    )
    lines = [f"# Model card: {d['name']} {d['version']['name']}", "", d["overview"], ""]
    lines += ["## Model details", "", f"- owners: {', '.join(o['name'] for o in d['owners'])}"]
    lines += [f"- lineage: {json.dumps(d['lineage'], sort_keys=True)}", ""]
    lines += [
        "## Model parameters",
        "",
        "| flavour | quantization | bytes | sha256 |",
        "|---|---|---|---|",
    ]
    for f in p["flavors"]:
        quant = f["quantization"].get("method", "")
        lines.append(f"| {f['flavor']} | {quant} | {f['model_bytes']} | `{f['sha256'][:12]}` |")
    lines += [
        "",
        f"- inputs: {json.dumps(p['input_format'])}",
        f"- labels: {', '.join(p['labels'])}",
    ]
    lines += ["", "## Quantitative analysis", ""]
    lines += [
        "| slice | devices | inferences | labels | accuracy | 95% interval |",
        "|---|---|---|---|---|---|",
    ]
    for s in [*q["performance_metrics"], *q["slices"]]:
        ci = f"{_pct(s.get('low'))}..{_pct(s.get('high'))}" if s.get("low") is not None else "-"
        lines.append(
            f"| {s['slice']} | {s['devices']} | {s['inferences']} | {s['labels']} | "
            f"{_pct(s.get('accuracy'))} | {ci} |"
        )
    est = q.get("estimated_accuracy") or {}
    trust = "trusted" if est.get("trusted") else "not trusted: " + "; ".join(est.get("reasons", []))
    lines += ["", f"- label-free estimate (CBPE): {_pct(est.get('accuracy'))} ({trust})"]
    lines += ["", "## Edge", ""]
    for r in e["runtimes"]:
        lines.append(f"- {r['flavor']}: runtime {r['runtime']}, opset {r['opset'] or '-'}")
    agree = e["int8_vs_float"]
    if agree and agree.get("agreement") is not None:
        lines.append(
            f"- int8 vs float top-1 agreement: {_pct(agree['agreement'])} "
            f"on {agree['vectors']} vectors"
        )
    for h in e["hardware"]:
        lines.append(
            f"- hardware {h['hardware']}: p95 {h.get('p95_ms')} ms, "
            f"rss {h.get('rss_mb')} MB over {h['devices']} devices"
        )
    lines.append(f"- drift reference: {', '.join(x[:16] for x in e['drift_reference_sha256'])}")
    prov = e["provenance"]
    lines.append(f"- provenance: {json.dumps(prov, sort_keys=True)}")
    lines += ["", "## Considerations", ""]
    for item in card["considerations"]["limitations"]:
        lines.append(f"- limitation: {item['description']}")
    return "\n".join(lines) + "\n"
