"""System vitals for telemetry; every probe degrades to "unknown" on boards that lack it."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import psutil

from edgefleet_contract.messages import SystemStats

log = logging.getLogger(__name__)

_THERMAL = Path("/sys/class/thermal")


def _temperature() -> float | None:
    try:
        for zone in sorted(_THERMAL.glob("thermal_zone*/temp")):
            value = int(zone.read_text().strip()) / 1000.0
            if -100 < value < 250:
                return value
    except (OSError, ValueError):
        pass
    sensors = getattr(psutil, "sensors_temperatures", None)
    if sensors is None:
        return None
    try:
        for entries in sensors().values():
            for entry in entries:
                if -100 < entry.current < 250:
                    return float(entry.current)
    except (OSError, RuntimeError):
        return None
    return None


class SystemProbe:
    """Samples the machine; the first CPU reading primes psutil's interval counter."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._proc = psutil.Process(os.getpid())
        psutil.cpu_percent(interval=None)

    def sample(self) -> SystemStats:
        mem = psutil.virtual_memory()
        try:
            disk = psutil.disk_usage(str(self._data_dir))
            disk_used, disk_total = disk.used, disk.total
        except OSError:
            disk_used = disk_total = 0
        power, battery = "unknown", None
        try:
            bat = psutil.sensors_battery()
            if bat is not None:
                power = "ac" if bat.power_plugged else "battery"
                battery = max(0.0, min(100.0, float(bat.percent)))
        except (OSError, RuntimeError, AttributeError):
            pass
        try:
            load1: float | None = os.getloadavg()[0]
        except OSError:
            load1 = None
        return SystemStats(
            cpu_percent=max(0.0, min(100.0, psutil.cpu_percent(interval=None))),
            load1=load1,
            mem_used_bytes=mem.total - mem.available,
            mem_total_bytes=mem.total,
            rss_bytes=self._proc.memory_info().rss,
            disk_used_bytes=disk_used,
            disk_total_bytes=disk_total,
            temperature_c=_temperature(),
            uptime_s=max(0.0, time.time() - psutil.boot_time()),
            power=power,  # type: ignore[arg-type]
            battery_percent=battery,
        )
