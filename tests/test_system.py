"""System vitals degrade to "unknown" on boards that lack a sensor; they never raise."""

from __future__ import annotations

from pathlib import Path

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


def test_power_source_from_a_mains_supply(tmp_path: Path) -> None:
    mains = tmp_path / "AC"
    mains.mkdir()
    (mains / "type").write_text("Mains\n")
    (mains / "online").write_text("1\n")
    power, battery = power_source(tmp_path)
    assert power in ("ac", "battery")  # "battery" only if this machine really has one
    if battery is None:
        assert power == "ac"
    (mains / "online").write_text("0\n")
    assert power_source(tmp_path)[0] in ("unknown", "battery", "ac")


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
