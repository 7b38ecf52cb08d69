"""System vitals for telemetry.

Edge boards differ wildly in what they expose: a Raspberry Pi has one thermal
zone and no battery, a Jetson a dozen zones (one of which, PMIC-Die, reads a
constant 100 °C), a container may see none, a rugged gateway has a UPS.  Every
probe therefore degrades to "unknown" (None, 0, ``"unknown"``) instead of
raising: a missing sensor must never cost a telemetry batch.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import psutil

from edgefleet_contract.messages import SystemStats

log = logging.getLogger(__name__)

T = TypeVar("T")

Power = Literal["ac", "battery", "unknown"]

THERMAL_ROOT = Path("/sys/class/thermal")
POWER_SUPPLY_ROOT = Path("/sys/class/power_supply")
_CPU_ZONE_HINTS = ("cpu", "soc", "x86_pkg", "package", "core")
_PLAUSIBLE_C = (-40.0, 150.0)
"""Readings outside this range are treated as a broken or unused sensor."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):  # EINVAL/ENODATA on some zones, or gone
        return None


def thermal_zones(root: Path = THERMAL_ROOT) -> list[tuple[str, float]]:
    """``(type, °C)`` of every readable, plausible thermal zone."""
    zones = []
    for zone in sorted(root.glob("thermal_zone*")):
        raw = _read(zone / "temp")
        try:
            celsius = int(raw or "") / 1000.0
        except ValueError:
            continue
        if _PLAUSIBLE_C[0] < celsius < _PLAUSIBLE_C[1]:
            zones.append(((_read(zone / "type") or "").lower(), celsius))
    return zones


def temperature(root: Path = THERMAL_ROOT) -> float | None:
    """The hottest CPU/SoC zone (throttling is what matters), else the hottest zone."""
    zones = thermal_zones(root)
    cpu = [c for kind, c in zones if any(h in kind for h in _CPU_ZONE_HINTS)]
    if cpu or zones:
        return max(cpu or [c for _, c in zones])
    sensors = getattr(psutil, "sensors_temperatures", None)
    readings: dict[str, list[Any]] = _probe(sensors, {}) if sensors is not None else {}
    plausible = [
        float(entry.current)
        for entries in readings.values()
        for entry in entries
        if _PLAUSIBLE_C[0] < entry.current < _PLAUSIBLE_C[1]
    ]
    return max(plausible) if plausible else None


def power_source(root: Path = POWER_SUPPLY_ROOT) -> tuple[Power, float | None]:
    """Mains or battery, and the battery charge if there is one."""
    sensor = getattr(psutil, "sensors_battery", None)
    battery = _probe(sensor, None) if sensor is not None else None
    if battery is not None:
        percent = float(battery.percent)
        charge = min(100.0, max(0.0, percent)) if percent == percent else None
        if battery.power_plugged is None:
            return "unknown", charge
        return ("ac" if battery.power_plugged else "battery"), charge
    # No battery: a mains supply that says it is online still tells "ac".
    for supply in sorted(root.glob("*")):
        if _read(supply / "type") == "Mains" and _read(supply / "online") == "1":
            return "ac", None
    return "unknown", None


def _probe(fn: Callable[[], T], default: T) -> T:
    try:
        return fn()
    except Exception as exc:  # a sensor library failing must not cost the batch
        log.debug("system probe %s failed: %s", getattr(fn, "__name__", fn), exc)
        return default


class SystemProbe:
    """Samples the machine; keep one so CPU percent covers the time between samples."""

    def __init__(
        self,
        data_dir: Path,
        *,
        thermal_root: Path = THERMAL_ROOT,
        power_root: Path = POWER_SUPPLY_ROOT,
    ) -> None:
        self._data_dir = data_dir
        self._thermal = thermal_root
        self._power = power_root
        self._proc = psutil.Process(os.getpid())
        self._boot = _probe(psutil.boot_time, time.time())
        # psutil measures CPU between calls: prime it so the first sample is meaningful.
        _probe(lambda: psutil.cpu_percent(interval=None), 0.0)

    def sample(self) -> SystemStats:
        mem = _probe(psutil.virtual_memory, None)
        disk = _probe(lambda: psutil.disk_usage(str(self._data_dir)), None)
        load = _probe(os.getloadavg, None)
        unknown: tuple[Power, float | None] = ("unknown", None)
        power, battery = _probe(lambda: power_source(self._power), unknown)
        cpu = _probe(lambda: psutil.cpu_percent(interval=None), 0.0)
        return SystemStats(
            cpu_percent=min(100.0, max(0.0, cpu)),
            load1=max(0.0, load[0]) if load is not None else None,
            mem_used_bytes=max(0, mem.total - mem.available) if mem is not None else 0,
            mem_total_bytes=mem.total if mem is not None else 0,
            rss_bytes=_probe(lambda: int(self._proc.memory_info().rss), 0),
            disk_used_bytes=disk.used if disk is not None else 0,
            disk_total_bytes=disk.total if disk is not None else 0,
            temperature_c=_probe(lambda: temperature(self._thermal), None),
            uptime_s=max(0.0, time.time() - self._boot),
            power=power,
            battery_percent=battery,
        )
