"""The real ``edge-agent run`` process against a real mosquitto: outages, kill -9, bad models,
and telemetry that carries what the model really did."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edgefleet_contract.messages import DriftReport, Telemetry
from fleet_server.broker import ManagedBroker
from fleet_server.config import SERVER_IDENTITY

from .agentproc import DIST, AgentProcess, Watcher, device_dir, spool_depth, spooled_telemetry
from .harness import Pki, wait_for

MODEL = DIST / "digits-1.0.0-onnx-int8.efpkg"
HOLDOUT = Path(__file__).with_name("data") / "digits_holdout.npz"


@pytest.fixture
def processes() -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(data_dir: Path, model: Path | None = MODEL, **env: str) -> AgentProcess:
        agent = AgentProcess(data_dir, model, **env)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def _rows() -> np.ndarray:
    return np.load(HOLDOUT)["x"].astype(np.float32)


def _assert_exactly_once_in_order(batches: list[Telemetry], boots: dict[str, int]) -> None:
    """Every batch of every boot (seq 1..last) arrived once, and in order per boot."""
    ids = [t.batch_id for t in batches]
    assert len(ids) == len(set(ids)), f"duplicates: {sorted({i for i in ids if ids.count(i) > 1})}"
    for boot, last in boots.items():
        seqs = [t.seq for t in batches if t.batch_id.startswith(boot + "-")]
        assert seqs == list(range(1, last + 1)), (boot, last, seqs)


def test_broker_outage_spools_and_drains_exactly_once(
    pki: Pki,
    fresh_broker: ManagedBroker,
    tmp_path: Path,
    processes: Callable[..., AgentProcess],
) -> None:
    watcher = Watcher(pki.server, fresh_broker.port, f"{SERVER_IDENTITY}-outage")
    data = device_dir(pki, tmp_path / "dev", "outage-1", fresh_broker.port)
    agent = processes(data)
    rows = _rows()
    try:
        wait_for(lambda: len(watcher.batches("outage-1")) >= 3, 60, "telemetry before the outage")
        agent.predict(rows[:50])
        fresh_broker.stop()
        predicted_offline = 0
        for start in range(50, 250, 25):  # the device keeps serving while cut off
            predicted_offline += len(agent.predict(rows[start : start + 25])["predictions"])
        wait_for(lambda: spool_depth(data) >= 10, 60, "batches spooled during the outage")
        during = spool_depth(data)
        fresh_broker.start()
        wait_for(lambda: spool_depth(data) == 0, 60, "spool drained after the outage")
        wait_for(lambda: len(watcher.batches("outage-1")) >= during + 5, 60, "the backlog")
        assert agent.kill(signal.SIGTERM) == 0
        assert spool_depth(data) == 0
        batches = watcher.batches("outage-1")
        last = max(t.seq for t in batches)
        boot = batches[0].batch_id.rsplit("-", 1)[0]
        wait_for(lambda: len(watcher.batches("outage-1")) >= last, 30, "every batch")
        _assert_exactly_once_in_order(watcher.batches("outage-1"), {boot: last})
        counted = sum(t.inference.count for t in batches if t.inference is not None)
        assert counted == 50 + predicted_offline  # predictions made offline reached the server
        assert any(t.spool.depth >= 5 for t in batches)  # the backlog was reported
    finally:
        watcher.close()


def test_kill_9_with_a_full_spool_loses_nothing(
    pki: Pki,
    fresh_broker: ManagedBroker,
    tmp_path: Path,
    processes: Callable[..., AgentProcess],
) -> None:
    watcher = Watcher(pki.server, fresh_broker.port, f"{SERVER_IDENTITY}-kill9")
    data = device_dir(pki, tmp_path / "dev", "kill9-1", fresh_broker.port)
    try:
        first = processes(data)
        wait_for(lambda: len(watcher.batches("kill9-1")) >= 2, 60, "first telemetry")
        fresh_broker.stop()
        wait_for(lambda: spool_depth(data) >= 8, 60, "a backlog in the spool")
        assert first.kill(signal.SIGKILL) == -signal.SIGKILL
        spooled = spooled_telemetry(data)
        assert len(spooled) >= 8
        boot = spooled[0].batch_id.rsplit("-", 1)[0]
        last_first_boot = max(t.seq for t in spooled)
        fresh_broker.start()
        second = processes(data)
        wait_for(lambda: spool_depth(data) == 0, 60, "the old backlog drained")
        wait_for(
            lambda: any(not t.batch_id.startswith(boot) for t in watcher.batches("kill9-1")),
            60,
            "telemetry of the new boot",
        )
        assert second.kill(signal.SIGTERM) == 0
        wait_for(
            lambda: (
                len([t for t in watcher.batches("kill9-1") if t.batch_id.startswith(boot)])
                >= last_first_boot
            ),
            30,
            "every batch of the killed boot",
        )
        batches = watcher.batches("kill9-1")
        new_boot = next(t for t in batches if not t.batch_id.startswith(boot)).batch_id
        new_last = max(t.seq for t in batches if t.batch_id.startswith(new_boot.rsplit("-", 1)[0]))
        _assert_exactly_once_in_order(
            batches, {boot: last_first_boot, new_boot.rsplit("-", 1)[0]: new_last}
        )
        assert any(t.spool.replayed_total > 0 for t in batches)
    finally:
        watcher.close()


def test_state_telemetry_and_drift_from_the_running_daemon(
    pki: Pki, broker: ManagedBroker, tmp_path: Path, processes: Callable[..., AgentProcess]
) -> None:
    watcher = Watcher(pki.server, broker.port, f"{SERVER_IDENTITY}-drift")
    data = device_dir(pki, tmp_path / "dev", "drift-1", broker.port)
    agent = processes(data, EDGE_AGENT_FIRMWARE_VERSION="2.4.1", EDGE_AGENT_DRIFT__INTERVAL_S="0")
    rows = _rows()
    try:
        wait_for(lambda: watcher.state("drift-1") is not None, 60, "reported state")
        state = watcher.state("drift-1")
        assert state is not None and state.health == "ok" and state.model is not None
        assert (state.model.name, state.model.version, state.model.runtime) == (
            "digits",
            "1.0.0",
            "onnx",
        )
        assert state.firmware is not None and state.firmware.version == "2.4.1"
        assert {"predict", "feedback", "local-api", "runtime:onnx"} <= set(state.capabilities)

        def drift_after(batch: np.ndarray) -> Telemetry:
            seen = len(watcher.batches("drift-1"))
            for start in range(0, len(batch), 100):
                agent.predict(batch[start : start + 100])
            wait_for(
                lambda: any(t.drift for t in watcher.batches("drift-1")[seen:]), 60, "a drift score"
            )
            return next(t for t in watcher.batches("drift-1")[seen:] if t.drift)

        normal = drift_after(rows[:300])
        shifted = drift_after(np.clip(rows[:300] * 0.3 + 9.0, 0, 16))
        assert isinstance(normal.drift, DriftReport) and isinstance(shifted.drift, DriftReport)
        assert normal.drift.baseline is None  # still learning this device's normal
        assert normal.drift.reference.p_value > 1e-4
        assert shifted.drift.reference.p_value < 1e-9
        assert shifted.drift.score > max(0.5, 2 * normal.drift.score)
        windows = [t.inference for t in watcher.batches("drift-1") if t.inference]
        assert sum(w.count for w in windows) >= 600
        latency = next(w.latency for w in windows if w.latency)
        assert 0 < latency.p50_ms <= latency.p95_ms <= latency.p99_ms
        assert sum(sum(w.class_counts.values()) for w in windows) >= 600
        assert any(sum(w.confidence_hist) > 0 for w in windows)
    finally:
        watcher.close()


@pytest.mark.parametrize("kind", ["corrupt", "wrong-hash", "self-test"])
def test_a_bad_boot_model_degrades_but_the_daemon_stays_up(
    kind: str,
    pki: Pki,
    broker: ManagedBroker,
    tmp_path: Path,
    processes: Callable[..., AgentProcess],
) -> None:
    from agent import localclient

    from .test_serving import BAD

    make, _, message = BAD[kind]
    device = f"bad-{kind}"
    watcher = Watcher(pki.server, broker.port, f"{SERVER_IDENTITY}-{device}")
    data = device_dir(pki, tmp_path / "dev", device, broker.port)
    agent = processes(data, model=make(tmp_path))
    try:
        wait_for(lambda: watcher.state(device) is not None, 60, "reported state")
        state = watcher.state(device)
        assert state is not None and state.health == "degraded" and state.model is None
        assert state.health_detail and "refused" in state.health_detail
        assert re.search(message, state.health_detail)  # the reason, not just "failed"
        status, doc = localclient.request(agent.address, "GET", "/v1/health")
        assert status == 503 and doc["status"] == "degraded"
        wait_for(lambda: len(watcher.batches(device)) >= 2, 60, "telemetry while degraded")
        assert agent.proc.poll() is None
    finally:
        watcher.close()


def test_a_refused_update_leaves_the_running_model_serving(
    pki: Pki, broker: ManagedBroker, tmp_path: Path
) -> None:
    from agent.config import AgentSettings, LocalApiSettings
    from agent.daemon import Agent
    from agent.identity import Identity
    from edgefleet_contract.errors import ModelError

    from .test_serving import BAD

    data = device_dir(pki, tmp_path / "dev", "swap-1", broker.port)
    settings = AgentSettings(data_dir=data, model=MODEL, local_api=LocalApiSettings(port=0))
    agent = Agent(settings, Identity.load(data))
    agent.start()
    try:
        good = agent.service.model
        assert good is not None and agent.health == "ok"
        for kind, (make, error, _) in BAD.items():
            folder = tmp_path / kind
            folder.mkdir()
            with pytest.raises(error):
                agent.serve(make(folder))
            assert agent.service.model is good
            assert agent.health == "degraded" and agent.health_detail
            assert isinstance(agent.service.predict(_rows()[:3]).labels, tuple)
            assert agent.reported_state().model == good.ref
        newer = agent.serve(DIST / "digits-1.0.0-tflite-float32.efpkg")
        assert agent.health == "ok" and agent.reported_state().model == newer.ref
        assert issubclass(error, ModelError)
    finally:
        agent.stop()
