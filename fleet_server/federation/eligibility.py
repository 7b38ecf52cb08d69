"""Which devices may take part in a round: selector, presence, and their latest telemetry.

Pure: the caller hands in the device records and each one's latest telemetry
batch, so the rules are tested without a store or a broker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from edgefleet_contract.messages import LearningStats, Telemetry

from ..selector import Selector, _compare
from ..store.base import Device
from .spec import Eligibility

Facts = tuple[LearningStats | None, str | None]
"""A device's latest learning stats and power source (what eligibility reads of telemetry)."""


def reason_excluded(
    device: Device, telemetry: Telemetry | None, rules: Eligibility, model: str
) -> str | None:
    """Why ``device`` may not train now, or ``None`` when it may."""
    learning = telemetry.learning if telemetry is not None else None
    power = telemetry.system.power if telemetry is not None and telemetry.system else None
    return _excluded(device, (learning, power), rules, model)


def _excluded(device: Device, facts: Facts, rules: Eligibility, model: str) -> str | None:
    learning, power = facts
    if rules.online and not device.online:
        return "offline"
    if device.state == "revoked":
        return "revoked"
    if rules.model_version is not None and (
        device.model_name != model or not _compare("=", device.model_version, rules.model_version)
    ):
        return "model_version"
    if learning is None:
        return "no_learning_telemetry"
    if learning.labelled_samples < rules.min_samples:
        return "too_few_samples"
    if learning.new_samples < rules.min_new_samples:
        return "too_few_new_samples"
    if rules.idle and learning.busy:
        return "busy"
    if not rules.allow_battery and power == "battery":
        return "on_battery"
    return None


def census(
    devices: Iterable[Device],
    facts: Callable[[list[str]], Mapping[str, Facts]],
    selector: Selector,
    rules: Eligibility,
    model: str,
) -> tuple[list[str], Counter[str]]:
    """The eligible ids among the selected devices, and how many were left out per reason
    (``eligible`` counts the others), so every round can show who could train and why not.

    ``facts`` answers for all selected devices at once (one store query, not one per
    device)."""
    ids: list[str] = []
    counts: Counter[str] = Counter()
    chosen = [d for d in devices if selector.matches(d)]
    known = facts([d.id for d in chosen])
    for device in chosen:
        reason = _excluded(device, known.get(device.id, (None, None)), rules, model)
        if reason is None:
            ids.append(device.id)
        else:
            counts[reason] += 1
    counts["eligible"] = len(ids)
    return sorted(ids), counts


def eligible(
    devices: Iterable[Device],
    latest: Callable[[str], Telemetry | None],
    selector: Selector,
    rules: Eligibility,
    model: str,
) -> list[str]:
    """The eligible ids, reading each device's telemetry through ``latest``."""

    def facts(ids: list[str]) -> dict[str, Facts]:
        out: dict[str, Facts] = {}
        for device_id in ids:
            telemetry = latest(device_id)
            power = telemetry.system.power if telemetry and telemetry.system else None
            out[device_id] = (telemetry.learning if telemetry else None, power)
        return out

    return census(devices, facts, selector, rules, model)[0]
