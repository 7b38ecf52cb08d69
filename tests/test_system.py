"""System vitals degrade to "unknown" on boards that lack a sensor; they never raise."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from agent.system import SystemProbe, power_source, temperature


def _zone(root: Path, n: int, kind: str, millideg: str) -> None:
    zone = root / f"thermal_zone{n}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    (zone / "temp").write_text(millideg + "\n")


def test_temperature_prefers_the_hottest_cpu_zone(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "PMIC-Die", "100000")  # Jetson: a constant, meaningless 100 °C
    _zone(tmp_path, 1, "CPU-therm", "41500")
    _zone(tmp_path, 2, "GPU-therm", "39000")
    _zone(tmp_path, 3, "soc_thermal", "47250")
    _zone(tmp_path, 4, "cpu-broken", "garbage")
    assert temperature(tmp_path) == 47.25


def test_temperature_without_cpu_zones_or_any_zone(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "board", "35000")
    _zone(tmp_path, 1, "unused", "-273000")  # implausible: ignored
    assert temperature(tmp_path) == 35.0
    empty = tmp_path / "none"
    empty.mkdir()
    reading = temperature(empty)  # falls back to psutil; whatever it finds is plausible
    assert reading is None or -40.0 < reading < 150.0


def _supply(root: Path, name: str, kind: str, online: str) -> Path:
    supply = root / name
    supply.mkdir()
    (supply / "type").write_text(kind + "\n")
    (supply / "online").write_text(online + "\n")
    return supply


def _no_battery(monkeypatch: pytest.MonkeyPatch) -> None:
    """A board without a battery (psutil finds none), whatever this machine has."""
    monkeypatch.setattr(psutil, "sensors_battery", lambda: None)


def test_power_source_from_a_mains_supply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_battery(monkeypatch)
    assert power_source(tmp_path) == ("unknown", None)  # no supply at all
    _supply(tmp_path, "USB", "USB", "1")  # not mains: says nothing about the board's power
    assert power_source(tmp_path) == ("unknown", None)
    mains = _supply(tmp_path, "AC", "Mains", "0")
    assert power_source(tmp_path) == ("unknown", None)  # unplugged mains, and no battery
    (mains / "online").write_text("1\n")
    assert power_source(tmp_path) == ("ac", None)


@pytest.mark.parametrize(
    ("percent", "plugged", "expected"),
    [
        (57.0, False, ("battery", 57.0)),
        (80.0, True, ("ac", 80.0)),
        (40.0, None, ("unknown", 40.0)),
        (130.0, False, ("battery", 100.0)),
        (-3.0, False, ("battery", 0.0)),
        (float("nan"), True, ("ac", None)),
    ],
)
def test_power_source_from_a_battery(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    percent: float,
    plugged: bool | None,
    expected: tuple[str, float | None],
) -> None:
    """psutil's battery decides (and its charge is bounded); a mains supply that is online
    does not override a battery that says it is discharging."""
    reading = SimpleNamespace(percent=percent, secsleft=0, power_plugged=plugged)
    monkeypatch.setattr(psutil, "sensors_battery", lambda: reading)
    _supply(tmp_path, "AC", "Mains", "1")
    assert power_source(tmp_path) == expected


def test_a_failing_battery_sensor_falls_back_to_the_supplies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise OSError("no ACPI")

    monkeypatch.setattr(psutil, "sensors_battery", broken)
    _supply(tmp_path, "AC", "Mains", "1")
    assert power_source(tmp_path) == ("ac", None)


def test_sample_on_a_board_without_sensors(tmp_path: Path) -> None:
    probe = SystemProbe(
        tmp_path / "missing-data-dir",
        thermal_root=tmp_path / "no-thermal",
        power_root=tmp_path / "no-power",
    )
    stats = probe.sample()
    assert stats.disk_total_bytes == 0  # the data dir does not exist: unknown, not an error
    assert stats.mem_total_bytes > 0 and stats.rss_bytes > 0 and stats.uptime_s > 0
    assert 0.0 <= stats.cpu_percent <= 100.0
    real = SystemProbe(tmp_path).sample()
    assert real.disk_total_bytes > 0
