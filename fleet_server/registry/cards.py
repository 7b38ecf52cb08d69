"""Where model cards come from: package facts kept at registration, fleet figures on demand.

A package's facts (:func:`~.card.package_facts`) are written beside its blob
when it is registered (``cards/<sha256>.json`` under the artifact root), so a
card never re-reads a large package; a version registered before cards existed
has its facts taken from the blob the first time its card is asked for.

The fleet figures are the version's own telemetry (``inference.model`` and
``version`` match) over the last day, from every device that sent some:
inferences, feedback accuracy with a 95% Wilson interval over all devices, per
hardware class, per tag and per device (worst first), per hour, and latency
and memory per hardware class.  Bounded: at most :data:`MAX_DEVICES` devices and
:data:`MAX_BATCHES` batches each.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgefleet_contract import package
from edgefleet_contract.errors import EdgefleetError, NotFound
from edgefleet_contract.messages import Telemetry

from ..cbpe import Calibration, reference_drift
from ..store.base import Artifact, Device, DeviceStore, TelemetryStore, TrainingRecords
from .card import build, package_facts, wilson

MAX_DEVICES = 500
MAX_BATCHES = 2000
WINDOW_S = 86400.0
MAX_DEVICE_SLICES = 50
HOUR = 3600.0


class FleetRecords(DeviceStore, TelemetryStore, TrainingRecords, Protocol):
    """What a card reads from the store: devices, their telemetry, training runs."""


class CardStore:
    """Package facts by sha256, as JSON files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.json"

    def save(self, sha256: str, facts: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._path(sha256).with_suffix(".tmp")
        tmp.write_text(json.dumps(facts, sort_keys=True))
        os.replace(tmp, self._path(sha256))

    def load(self, sha256: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._path(sha256).read_text())
        except (OSError, ValueError):
            return None
        return data

    def facts(self, artifact: Artifact, blob: Path | None) -> dict[str, Any]:
        """The facts of a registered package: kept ones, else taken from its blob now."""
        kept = self.load(artifact.sha256)
        if kept is not None:
            return kept
        if blob is None:
            raise NotFound(f"the package of {artifact.spec} is missing from the blob store")
        facts = package_facts(package.read_package(blob, max_bytes=max(artifact.size, 1)))
        self.save(artifact.sha256, facts)
        return facts


def calibration_of(
    find: Callable[[str, str], Sequence[Artifact]],
    cards: CardStore,
    blob_of: Callable[[str], Path | None],
    label: str,
) -> Calibration | None:
    """The calibration the package of ``name@version`` carries (any flavour), if one does."""
    name, _, version = label.partition("@")
    for artifact in find(name, version):
        try:
            table = cards.facts(artifact, blob_of(artifact.sha256)).get("calibration")
        except (EdgefleetError, OSError):
            continue
        if table:
            return Calibration.from_json(table)
    return None


@dataclass
class _Tally:
    devices: set[str] = field(default_factory=set)
    inferences: int = 0
    labels: int = 0
    correct: int = 0
    p95: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)

    def add(self, device_id: str, t: Telemetry) -> None:
        inf = t.inference
        assert inf is not None
        self.devices.add(device_id)
        self.inferences += inf.count
        self.labels += inf.feedback_count
        self.correct += inf.feedback_correct
        if inf.latency is not None:
            self.p95.append(inf.latency.p95_ms)
        if t.system is not None:
            self.rss.append(float(t.system.rss_bytes))

    def row(self, name: str) -> dict[str, Any]:
        low, high = wilson(self.correct, self.labels)
        return {
            "slice": name,
            "devices": len(self.devices),
            "inferences": self.inferences,
            "labels": self.labels,
            "accuracy": self.correct / self.labels if self.labels else None,
            "low": low,
            "high": high,
        }


def _mean(xs: Sequence[float]) -> float | None:
    return round(sum(xs) / len(xs), 3) if xs else None


def fleet_figures(
    devices: Sequence[Device],
    batches: Mapping[str, Iterable[Telemetry]],
    name: str,
    version: str,
    *,
    now: float,
) -> dict[str, Any]:
    """The version's figures from each device's batches (pure: the store is read elsewhere)."""
    tallies: dict[str, _Tally] = defaultdict(_Tally)
    hours: dict[tuple[str, float], _Tally] = defaultdict(_Tally)
    """Per slice (the fleet, a cohort, a device) and hour."""
    per_device: dict[str, _Tally] = defaultdict(_Tally)
    hardware: dict[str, _Tally] = defaultdict(_Tally)
    hist: list[int] = []
    drift: list[float] = []
    for device in devices:
        for t in batches.get(device.id, ()):
            inf = t.inference
            if inf is None or inf.model != name or inf.version != version:
                continue
            keys = ["all", f"hardware={device.hardware or 'unknown'}"]
            keys += [f"tag:{k}={v}" for k, v in sorted(device.tags.items())]
            hour = t.ts - t.ts % HOUR
            for key in keys:
                tallies[key].add(device.id, t)
                hours[(key, hour)].add(device.id, t)
            hours[(f"device:{device.id}", hour)].add(device.id, t)
            per_device[device.id].add(device.id, t)
            hardware[device.hardware or "unknown"].add(device.id, t)
            if inf.confidence_hist:
                if len(hist) != len(inf.confidence_hist):
                    hist = [0] * len(inf.confidence_hist)  # another binning: the newest wins
                hist = [a + b for a, b in zip(hist, inf.confidence_hist, strict=True)]
            shift = reference_drift(t.drift)
            if shift is not None:
                drift.append(shift)
    overall = tallies.pop("all", _Tally())
    slices = [tallies[k].row(k) for k in sorted(tallies)]
    worst_devices = sorted(
        (per_device[d].row(f"device:{d}") for d in per_device if per_device[d].labels),
        key=lambda r: (r["accuracy"], r["slice"]),
    )[:MAX_DEVICE_SLICES]
    measured = [s for s in slices if s["labels"]]
    worst = min(measured, key=lambda s: s["accuracy"])["slice"] if len(measured) > 1 else None
    return {
        "window": {"since": now - WINDOW_S, "until": now},
        "devices": len(overall.devices),
        "labels": overall.labels,
        "overall": [overall.row("all")],
        "slices": slices + worst_devices,
        "worst_slice": worst,
        "confidence_hist": hist,
        "drift_max": max(drift) if drift else None,
        "timeline": _timeline(hours, "all"),
        "slice_timelines": {
            row["slice"]: _timeline(hours, row["slice"])
            for row in slices + worst_devices
            if row["labels"]
        },
        "hardware": [
            {
                "hardware": hw,
                "devices": len(t.devices),
                "p95_ms": _mean(t.p95),
                "rss_mb": _mean([r / 2**20 for r in t.rss]),
            }
            for hw, t in sorted(hardware.items())
        ],
    }


def _timeline(hours: Mapping[tuple[str, float], _Tally], key: str) -> list[dict[str, Any]]:
    """One slice's accuracy per hour, oldest first (each with its interval)."""
    return [{"hour": h, **t.row(key)} for (k, h), t in sorted(hours.items()) if k == key]


def card_of(
    store: FleetRecords,
    artifacts: Sequence[Artifact],
    cards: CardStore,
    blob_of: Callable[[str], Path | None],
    *,
    now: float,
) -> dict[str, Any]:
    """The card of the version ``artifacts`` (its flavours) are, with today's fleet figures."""
    first = artifacts[0]
    facts = [cards.facts(a, blob_of(a.sha256)) for a in artifacts]
    devices = store.list_devices(limit=MAX_DEVICES).items
    batches = {
        d.id: store.query_raw(d.id, since=now - WINDOW_S, until=now + 1, limit=MAX_BATCHES)
        for d in devices
    }
    run = None
    run_id = first.lineage.get("run_id")
    if isinstance(run_id, str):
        try:
            r = store.get_training_run(run_id)
        except NotFound:
            r = None
        if r is not None:
            clients = {p for rec in store.list_rounds(r.id) for p in rec.participants}
            run = {
                "spec": r.spec,
                "completed_rounds": r.completed_rounds,
                "result": r.result,
                "clients": len(clients),
            }
    fleet = fleet_figures(devices, batches, first.name, first.version, now=now)
    return build(first.name, first.version, artifacts, facts, run=run, fleet=fleet)
