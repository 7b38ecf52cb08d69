"""Drift end to end: two real ``edge-agent`` processes, the managed mosquitto (mTLS) and
a real fleet server.  Both devices see non-IID traffic (their own classes), so both
differ from the package reference; only the one whose camera changes alerts."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sklearn.datasets import load_digits

from agent import localclient
from edgefleet_contract.messages import DriftReport
from fleet_server.server import FleetServer, initialize

from .agentproc import BIN, DIST
from .harness import ADMIN_PASSWORD, admin_token, enroll_agent, server_settings, wait_for

MODEL = DIST / "digits-1.0.0-onnx-float32.efpkg"


def _start(data_dir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "EDGE_AGENT_MODEL": str(MODEL),
        "EDGE_AGENT_TELEMETRY_INTERVAL_S": "0.3",
        "EDGE_AGENT_LOCAL_API__PORT": "0",
        "EDGE_AGENT_LOG_FORMAT": "text",
        "EDGE_AGENT_DRIFT__INTERVAL_S": "0",
        "EDGE_AGENT_DRIFT__MIN_SAMPLES": "100",
        "EDGE_AGENT_DRIFT__BURN_IN_ROWS": "400",
    }
    with (data_dir / "agent.log").open("ab") as log:
        return subprocess.Popen(
            [str(BIN / "edge-agent"), "run", "--data-dir", str(data_dir)],
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def _address(data_dir: Path) -> str:
    path = data_dir / "local-api.addr"
    wait_for(path.exists, 90, "local API address")
    return path.read_text().strip()


def _latest(server: FleetServer, device_id: str) -> DriftReport | None:
    batches = server.store.query_raw(device_id, since=0, until=1e11, limit=100_000)
    reports = [b.drift for b in batches if isinstance(b.drift, DriftReport)]
    return reports[-1] if reports else None


def test_only_the_changed_device_alerts(tmp_path: Path) -> None:
    settings: Any = server_settings(tmp_path / "fleet")
    initialize(settings, admin_password=ADMIN_PASSWORD)
    server = FleetServer(settings)
    server.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        url = server.settings.api_url
        token = admin_token(url)
        ids = ["calm", "changed"]
        dirs = [tmp_path / "agents" / d for d in ids]
        for device_id, folder in zip(ids, dirs, strict=True):
            enroll_agent(url, token, device_id, folder, tags={"site": device_id})
            procs.append(_start(folder))
        addresses = [_address(d) for d in dirs]
        digits = load_digits()
        x = digits.data.astype(np.float32)
        rng = np.random.default_rng(0)
        pools = [np.flatnonzero(digits.target < 5), np.flatnonzero(digits.target >= 3)]

        def traffic(i: int, *, invert: bool = False) -> None:
            rows = x[rng.choice(pools[i], 120)]
            status, doc = localclient.predict(addresses[i], 16.0 - rows if invert else rows)
            assert status == 200, doc

        def burned_in() -> bool:
            for i in range(2):
                traffic(i)
            time.sleep(0.3)
            return all((r := _latest(server, d)) is not None and r.baseline for d in ids)

        wait_for(burned_in, 120, "both baselines learned")
        for _ in range(4):  # ordinary windows: nobody alerts
            for i in range(2):
                traffic(i)
            time.sleep(0.5)

        def changed_alerts() -> bool:
            traffic(0)
            traffic(1, invert=True)
            time.sleep(0.3)
            report = _latest(server, "changed")
            return report is not None and report.alert

        wait_for(changed_alerts, 120, "the changed device alerts")
        calm, changed = _latest(server, "calm"), _latest(server, "changed")
        assert calm is not None and changed is not None and changed.baseline is not None
        assert not calm.alert
        # Both differ from the package reference (their own classes; one window of the
        # calm device may fall short of that, so its whole history is asked) ...
        calm_reports = [
            b.drift
            for b in server.store.query_raw("calm", since=0, until=1e11, limit=100_000)
            if isinstance(b.drift, DriftReport)
        ]
        assert any(r.reference.p_value < 0.01 for r in calm_reports)
        assert changed.reference.p_value < 0.01
        # ... only the changed one from its own baseline, by a large effect.
        assert changed.baseline.p_value < 1e-6 and changed.baseline.effect > 0.5
        # The package's PCA (drift-pca.json) reached the agent: both devices also test how
        # their features move together, and the inverted images are far off its subspace.
        for report in (calm, changed):
            assert report.multivariate is not None and report.multivariate.components > 1
            assert len(report.multivariate.histograms) == 2
        joint = changed.multivariate.baseline  # type: ignore[union-attr]
        assert joint is not None and joint.p_value < 1e-6
        calm_history = server.store.query_raw("calm", since=0, until=1e11, limit=100_000)
        assert not any(getattr(b.drift, "alert", False) for b in calm_history)

        r = httpx.get(f"{url}/api/v1/console/summary", headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        drift = r.json()["alerts"]["drift"]
        assert [a["device_id"] for a in drift["items"]] == ["changed"]
        assert drift["items"][0]["detail"] == "changed from its baseline"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        server.stop()
