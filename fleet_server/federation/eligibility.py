"""Which devices may take part in a round: selector, presence, and their latest telemetry.

Pure: the caller hands in the device records and each one's latest telemetry
batch, so the rules are tested without a store or a broker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from edgefleet_contract.messages import Telemetry

from ..selector import Selector, _compare
from ..store.base import Device
from .spec import Eligibility


def reason_excluded(
    device: Device, telemetry: Telemetry | None, rules: Eligibility, model: str
) -> str | None:
    """Why ``device`` may not train now, or ``None`` when it may."""
    if rules.online and not device.online:
        return "offline"
    if device.state == "revoked":
        return "revoked"
    if rules.model_version is not None and (
        device.model_name != model or not _compare("=", device.model_version, rules.model_version)
    ):
        return "model_version"
    learning = telemetry.learning if telemetry is not None else None
    if learning is None:
        return "no_learning_telemetry"
    if learning.labelled_samples < rules.min_samples:
        return "too_few_samples"
    if learning.new_samples < rules.min_new_samples:
        return "too_few_new_samples"
    if rules.idle and learning.busy:
        return "busy"
    system = telemetry.system if telemetry is not None else None
    if not rules.allow_battery and system is not None and system.power == "battery":
        return "on_battery"
    return None


def census(
    devices: Iterable[Device],
    latest: Callable[[str], Telemetry | None],
    selector: Selector,
    rules: Eligibility,
    model: str,
) -> tuple[list[str], Counter[str]]:
    """The eligible ids among the selected devices, and how many were left out per reason
    (``eligible`` counts the others), so every round can show who could train and why not."""
    ids: list[str] = []
    counts: Counter[str] = Counter()
    for device in devices:
        if not selector.matches(device):
            continue
        reason = reason_excluded(device, latest(device.id), rules, model)
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
    return census(devices, latest, selector, rules, model)[0]
