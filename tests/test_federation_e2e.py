"""Federated runs through the real broker, the real fleet server and the agent's learning code."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from agent.learning.worker import LearningWorker
from fleet_server.config import ServerSettings
from fleet_server.federation.candidate import HeldOutSet
from fleet_server.federation.spec import RunSpec
from fleet_server.modelkit.digits import split
from fleet_server.server import FleetServer, initialize

from .fl_helpers import MODEL, Device, dirichlet_parts, fl_spec, make_device, write_start_package
from .harness import ADMIN_PASSWORD, free_port, server_settings, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def settings(tmp_path: Path) -> ServerSettings:
    s = server_settings(tmp_path / "fleet")
    assert isinstance(s, ServerSettings)
    initialize(s, admin_password=ADMIN_PASSWORD)
    write_start_package(s.data_dir / "models")
    return s


def devices(server: FleetServer, tmp: Path, n: int, prefix: str, **kw: object) -> list[Device]:
    data = split()
    parts = dirichlet_parts(data.y_train, n, alpha=0.5, seed=3)
    made = [
        make_device(server, tmp, f"{prefix}-{i}", data.x_train[p], data.y_train[p], **kw)  # type: ignore[arg-type]
        for i, p in enumerate(parts)
    ]
    wait_for(lambda: all(d.link.connected.is_set() for d in made), what="devices connected")
    wait_for(
        lambda: all(server.store.latest_telemetry(d.link.device_id) for d in made),  # type: ignore[attr-defined]
        what="telemetry stored",
    )
    wait_for(
        lambda: all(server.store.get_device(d.link.device_id).online for d in made),
        what="devices online",
    )
    return made


def spec(**kw: object) -> RunSpec:
    # FedAvg unless a test says otherwise: these tests are about the transport and its failures.
    return fl_spec(
        "tag:fl=yes", 4, epochs=5, round_timeout_s=120, fields={"strategy": "fedavg", **kw}
    )


def wait_done(server: FleetServer, run_id: str, timeout: float = 240) -> str:
    def done() -> bool:
        return server.store.get_training_run(run_id).status not in ("pending", "running")  # type: ignore[attr-defined]

    wait_for(done, timeout, "run finished")
    return str(server.store.get_training_run(run_id).status)  # type: ignore[attr-defined]


def test_fedavg_over_real_broker_accuracy_rises_and_candidate_handed_over(
    server: FleetServer, tmp_path: Path
) -> None:
    handed: list[tuple[Path, dict[str, object]]] = []
    server.training.on_candidate = lambda path, lineage: handed.append((path, lineage))
    fleet = devices(server, tmp_path / "devs", 5, "fa")
    try:
        run = server.training.start_run(spec(rounds=4, min_clients=5), actor="test")
        assert wait_done(server, run.id) == "completed", server.store.get_training_run(run.id)  # type: ignore[attr-defined]
        rounds = server.store.list_rounds(run.id)  # type: ignore[attr-defined]
        assert [r.round for r in rounds] == [1, 2, 3, 4]
        accuracy = [r.accuracy for r in rounds]
        assert accuracy[-1] > accuracy[0] and accuracy[-1] > 0.6, accuracy
        assert all(len(r.participants) == 5 for r in rounds)
        assert all(r.bytes_out > 0 and r.bytes_in > 0 for r in rounds)
        result = server.store.get_training_run(run.id).result  # type: ignore[attr-defined]
        assert result["beats_parent"] is True
        assert result["accuracy"] > result["baseline_accuracy"]
        flavors = sorted(p.name for p, _ in handed)
        assert flavors == sorted(
            f"{MODEL}-1.1.0-{f}.efpkg"
            for f in ("onnx-float32", "onnx-int8", "tflite-float32", "tflite-int8")
        )
        assert handed[0][1]["run_id"] == run.id
        assert sorted(handed[0][1]["participants"]) == sorted(d.link.device_id for d in fleet)  # type: ignore[arg-type]
        assert all(d.worker.counts["handled"] >= 4 for d in fleet)
    finally:
        for d in fleet:
            d.stop()


class SlowWorker(LearningWorker):
    """Trains, but slowly enough for the test to kill the device mid-round."""

    started = 0

    def answer_native(self, instruction, arrays):  # type: ignore[no-untyped-def]
        SlowWorker.started += 1
        time.sleep(30)
        return super().answer_native(instruction, arrays)


def test_device_killed_mid_round_fails_fast_and_round_completes(
    server: FleetServer, tmp_path: Path
) -> None:
    fleet = devices(server, tmp_path / "devs", 5, "kd")
    victim = devices(server, tmp_path / "victim", 1, "kv", worker_cls=SlowWorker)[0]
    try:
        run = server.training.start_run(
            spec(rounds=2, min_clients=5, round_timeout_s=600), actor="test"
        )
        wait_for(lambda: SlowWorker.started >= 1, 60, "victim training")
        # Abrupt death: the TCP connection drops without DISCONNECT, so the broker
        # publishes the device's Last Will (status offline).
        sock = victim.link._client.socket()
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)
        victim.link._stop.set()  # no reconnect: the device is "dead"
        assert wait_done(server, run.id, timeout=300) == "completed"
        first = server.store.list_rounds(run.id)[0]  # type: ignore[attr-defined]
        assert first.failures.get("offline") == 1, first.failures
        assert "timeout" not in first.failures
        assert victim.link.device_id not in first.participants
        assert len(first.participants) == 5
    finally:
        for d in fleet:
            d.stop()


class EvilWorker(LearningWorker):
    """Trains honestly, then corrupts the update in one of the ways an attacker might."""

    def __init__(self, *a: object, attack: str = "nan", **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.attack = attack

    def answer_native(self, instruction, arrays):  # type: ignore[no-untyped-def]
        reply, arrays = super().answer_native(instruction, arrays)
        if reply.kind != "reply" or instruction.kind != "train":
            return reply, arrays
        arrays = dict(arrays)
        first = next(iter(arrays))
        if self.attack == "nan":
            arrays[first] = arrays[first].copy()
            arrays[first].flat[0] = np.nan
        elif self.attack == "shape":
            arrays[first] = np.zeros((3, 3), np.float32)
        elif self.attack == "length":
            arrays["extra"] = np.zeros(4, np.float32)
        elif self.attack == "norm":
            arrays[first] = arrays[first] * 1e6
        return reply, arrays


def test_malicious_updates_are_rejected_counted_and_never_aggregated(
    server: FleetServer, tmp_path: Path
) -> None:
    fleet = devices(server, tmp_path / "devs", 4, "hm")
    evil = []
    for attack in ("nan", "shape", "length", "norm"):

        class Attack(EvilWorker):
            def __init__(self, *a: object, _attack: str = attack, **kw: object) -> None:
                super().__init__(*a, attack=_attack, **kw)

        evil += devices(server, tmp_path / attack, 1, f"ev{attack}", worker_cls=Attack)
    try:
        run = server.training.start_run(spec(rounds=2, min_clients=4), actor="test")
        assert wait_done(server, run.id) == "completed"
        rounds = server.store.list_rounds(run.id)  # type: ignore[attr-defined]
        for r in rounds:
            assert r.rejected == {
                "not_finite": 1,
                "wrong_shape": 1,
                "wrong_length": 1,
                "absurd_norm": 1,
            }, r.rejected
            assert sorted(r.participants) == sorted(d.link.device_id for d in fleet)
            assert r.accuracy is not None and np.isfinite(r.loss)
        assert rounds[-1].accuracy > 0.3
        metrics = server.metrics.render()
        assert 'edgefleet_fl_rejected_updates_total{reason="not_finite"} 2' in metrics
    finally:
        for d in fleet + evil:
            d.stop()


class RoundGate(LearningWorker):
    """Holds its answers from round 3 on until the test sets ``gate`` (the server restarts
    meanwhile).  Each test subclasses it, for a gate of its own."""

    gate: ClassVar[threading.Event]

    def answer_native(self, instruction, arrays):  # type: ignore[no-untyped-def]
        if int(instruction.config.get("server-round", 0)) >= 3:
            type(self).gate.wait(120)
        return super().answer_native(instruction, arrays)


class GateWorker(RoundGate):
    gate = threading.Event()


def test_run_resumes_from_checkpoint_after_server_restart(
    settings: ServerSettings, tmp_path: Path
) -> None:
    server = FleetServer(settings)
    server.start()
    server.training.build_candidates = False
    fleet = devices(server, tmp_path / "devs", 4, "rs", worker_cls=GateWorker)
    try:
        federated = {"client_evaluate": True, "evaluate_every": 2, "accept_by": "federated"}
        run = server.training.start_run(spec(rounds=5, min_clients=4, **federated), actor="test")
        grid = server.training.grid
        assert grid is not None
        wait_for(
            lambda: (
                grid.owed(fleet[0].link.device_id) > 0
                and server.store.get_training_run(run.id).completed_rounds == 2
            ),
            180,
            "round 3 under way",
        )  # type: ignore[attr-defined]
        server.stop()  # mid-round 3: the run stays 'running' with round 2 checkpointed
        GateWorker.gate.set()
        restarted = time.time()
        # A fresh API port: the old one may meanwhile be some reconnecting client's
        # ephemeral local port (devices do not use the API here).
        api = settings.api.model_copy(update={"port": free_port()})
        server = FleetServer(settings.model_copy(update={"api": api}))
        server.training.build_candidates = False
        server.start()
        assert wait_done(server, run.id, timeout=300) == "completed"
        rounds = server.store.list_rounds(run.id)  # type: ignore[attr-defined]
        assert [r.round for r in rounds] == [1, 2, 3, 4, 5]
        assert all(r.ts < restarted for r in rounds[:2])
        assert all(r.ts > restarted for r in rounds[2:])
        assert rounds[-1].accuracy >= rounds[1].accuracy
        # The evaluation schedule counts rounds of the run, not of the resumed loop, and the
        # parent's evaluation (before round 1, stored with it) still judges the candidate.
        assert [r.round for r in rounds if r.evaluation.get("devices")] == [2, 4, 5]
        assert len(rounds[0].evaluation["parent"]["devices"]) == 4
        judged = server.store.get_training_run(run.id).result["federated_acceptance"]  # type: ignore[attr-defined]
        assert judged["of_round"] == 5 and judged["devices"] == 4 and judged["accepted"] is True
    finally:
        for d in fleet:
            d.stop()
        server.stop()


class AdamGate(RoundGate):
    """Holds round 3 (of a FedAdam run) until the test has restarted the server."""

    gate = threading.Event()


def _saved(blob: bytes) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """The arrays and the header of a checkpoint's strategy state, read independently."""
    import io
    import json

    with np.load(io.BytesIO(blob)) as data:
        header = json.loads(bytes(data["__header__"]).decode())
        return {k: data[k] for k in data.files if k != "__header__"}, header


def test_resumed_fedadam_run_continues_its_moments_and_dp_releases(
    settings: ServerSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet_server.federation import runner as runner_module
    from fleet_server.federation import strategy_state

    server = FleetServer(settings)
    server.start()
    server.training.build_candidates = False
    fleet = devices(server, tmp_path / "devs", 4, "ra", worker_cls=AdamGate)
    private = {"central_dp": True, "noise_multiplier": 0.01, "clipping_norm": 50.0}
    try:
        run = server.training.start_run(
            spec(rounds=4, min_clients=4, strategy="fedadam", privacy=private), actor="test"
        )
        grid = server.training.grid
        assert grid is not None
        wait_for(
            lambda: (
                grid.owed(fleet[0].link.device_id) > 0
                and server.store.get_training_run(run.id).completed_rounds == 2  # type: ignore[attr-defined]
            ),
            180,
            "round 3 under way",
        )
        saved = server.store.latest_strategy_state(run.id)  # type: ignore[attr-defined]
        server.stop()
        arrays, header = _saved(saved)
        assert header["extra"] == {"dp_releases": 2}
        levels = [level["class"] for level in header["levels"]]  # type: ignore[attr-defined]
        assert levels == ["Float32", "DifferentialPrivacyServerSideFixedClipping", "FedAdam"]
        adam = f"{levels.index('FedAdam')}/m_t/"
        moments = {k.split("/", 2)[2]: v for k, v in arrays.items() if k.startswith(adam)}
        assert moments and any(np.abs(v).sum() > 0 for v in moments.values())

        restored: list[dict[str, np.ndarray]] = []
        real = strategy_state.restore

        def spy(strategy, blob):  # type: ignore[no-untyped-def]
            extra = real(strategy, blob)
            restored.append({k: np.array(v) for k, v in strategy.strategy.strategy.m_t.items()})
            return extra

        monkeypatch.setattr(runner_module.strategy_state, "restore", spy)
        AdamGate.gate.set()
        api = settings.api.model_copy(update={"port": free_port()})
        server = FleetServer(settings.model_copy(update={"api": api}))
        server.training.build_candidates = False
        server.start()
        assert wait_done(server, run.id, timeout=300) == "completed"
        assert len(restored) == 1 and set(restored[0]) == set(moments)
        for name, value in moments.items():
            np.testing.assert_array_equal(restored[0][name], value)
        final = _saved(server.store.latest_strategy_state(run.id))[1]  # type: ignore[attr-defined]
        assert final["extra"] == {"dp_releases": 4}
        rounds = server.store.list_rounds(run.id)  # type: ignore[attr-defined]
        assert [r.round for r in rounds] == [1, 2, 3, 4]
    finally:
        for d in fleet:
            d.stop()
        server.stop()


def _array(blob: bytes) -> np.ndarray:
    """A serialised ndarray, or an empty array for other bytes (encrypted key shares)."""
    from flwr.common import bytes_to_ndarray

    try:
        return bytes_to_ndarray(blob)
    except ValueError:
        return np.zeros(0)


def test_secagg_server_never_sees_an_individual_update(
    server: FleetServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgefleet_common import flower_compat
    from edgefleet_contract.package import decode_weights
    from fleet_server.federation import grid as grid_module

    seen: list[object] = []
    real_decode = flower_compat.decode

    def spy(data: bytes):  # type: ignore[no-untyped-def]
        message = real_decode(data)
        if message.metadata.reply_to_message_id and message.has_content():
            seen.append(message)  # a device's reply as the server receives it
        return message

    monkeypatch.setattr(grid_module.flower_compat, "decode", spy)
    server.training.build_candidates = False
    fleet = devices(server, tmp_path / "devs", 5, "sa")
    try:
        run = server.training.start_run(spec(rounds=2, min_clients=5, secagg=True), actor="test")
        assert wait_done(server, run.id) == "completed", server.store.get_training_run(run.id)  # type: ignore[attr-defined]
        rounds = server.store.list_rounds(run.id)  # type: ignore[attr-defined]
        assert [r.round for r in rounds] == [1, 2] and rounds[-1].accuracy > rounds[
            0
        ].accuracy * 0.9
        plain = [d.worker._secure_client.last_update for d in fleet]  # type: ignore[union-attr]
        assert all(p is not None for p in plain)
        received = []
        for message in seen:
            content = message.content  # type: ignore[attr-defined]
            for record in content.array_records.values():
                received += [a.numpy() for a in record.values()]
            for record in content.config_records.values():
                for value in record.values():
                    items = value if isinstance(value, list) else [value]
                    received += [_array(v) for v in items if isinstance(v, bytes)]
        assert received, "the spy saw no update traffic"
        compared: dict[str, int] = {}
        for update in plain:
            for name, array in update.items():  # type: ignore[union-attr]
                for got in received:
                    if got.size == array.size:
                        compared[name] = compared.get(name, 0) + 1
                        assert not np.allclose(got.reshape(array.shape), array, atol=1e-3), name
        # The check above ran: every trained array met a same-sized masked one on the wire.
        assert set(compared) == set(plain[0]), (compared, [a.size for a in received])  # type: ignore[arg-type]
        # ...yet the aggregate the server unmasked is the devices' weighted mean.
        checkpoint = server.store.latest_checkpoint(run.id)  # type: ignore[attr-defined]
        trainable = server.training._packages(MODEL, None).manifest.trainable
        final = decode_weights(checkpoint[1], trainable)
        sizes = [len(d.samples.dataset(64)[1]) for d in fleet]
        for name in final:
            mean = sum(n * p[name] for n, p in zip(sizes, plain, strict=True)) / sum(sizes)  # type: ignore[index]
            np.testing.assert_allclose(final[name], mean, atol=1e-3)
    finally:
        for d in fleet:
            d.stop()


def test_round_below_quorum_fails_the_run_with_a_reason(
    server: FleetServer, tmp_path: Path
) -> None:
    class NaN(EvilWorker):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, attack="nan", **kw)

    fleet = devices(server, tmp_path / "devs", 2, "qh")
    fleet += devices(server, tmp_path / "evil", 1, "qe", worker_cls=NaN)
    try:
        run = server.training.start_run(spec(rounds=3, min_clients=3), actor="test")
        assert wait_done(server, run.id) == "failed"
        final = server.store.get_training_run(run.id)  # type: ignore[attr-defined]
        assert "2 good updates, below the quorum of 3" in final.detail
        assert "rejected:not_finite 1" in final.detail and "qe-0" in final.detail
        (failed,) = server.store.list_rounds(run.id)  # type: ignore[attr-defined]
        assert failed.accuracy is None and failed.failures == {"rejected:not_finite": 1}
        assert failed.eligibility == {"eligible": 3}
        assert server.store.latest_checkpoint(run.id) is None  # type: ignore[attr-defined]
    finally:
        for d in fleet:
            d.stop()


def test_federated_evaluation_runs_on_each_devices_held_out_samples(
    server: FleetServer, tmp_path: Path
) -> None:
    server.training.build_candidates = False
    fleet = devices(server, tmp_path / "devs", 4, "fe")
    try:
        run = server.training.start_run(
            spec(rounds=3, min_clients=4, client_evaluate=True), actor="test"
        )
        assert wait_done(server, run.id) == "completed"
        rounds = server.store.list_rounds(run.id)  # type: ignore[attr-defined]
        assert [r.round for r in rounds] == [1, 2, 3]
        for r in rounds:
            evaluation = r.evaluation
            assert evaluation["of_round"] == r.round
            assert sorted(evaluation["devices"]) == sorted(d.link.device_id for d in fleet)
            for d in fleet:
                held = len(d.samples.dataset(64)[1]) // 5  # every 5th sample, never trained on
                figures = evaluation["devices"][d.link.device_id]
                assert figures["num-examples"] == held and 0 <= figures["accuracy"] <= 1
            assert 0 < evaluation["accuracy"] <= 1
        final = server.store.get_training_run(run.id).result["federated_evaluation"]  # type: ignore[attr-defined]
        assert final["of_round"] == 3 and len(final["devices"]) == 4
    finally:
        for d in fleet:
            d.stop()


def _sited(server: FleetServer, fleet: list[Device], sites: list[str]) -> None:
    for d, site in zip(fleet, sites, strict=True):
        server.store.update_device(d.link.device_id, tags={"fl": "yes", "site": site})


def test_federated_evaluation_every_k_rounds_by_cohort_accepts_a_better_candidate(
    server: FleetServer, tmp_path: Path
) -> None:
    handed: list[dict[str, object]] = []
    server.training.on_candidate = lambda path, lineage: handed.append(lineage)
    fleet = devices(server, tmp_path / "devs", 4, "fk")
    _sited(server, fleet, ["berlin", "berlin", "paris", "paris"])
    try:
        run = server.training.start_run(
            spec(
                rounds=5,
                client_evaluate=True,
                evaluate_every=2,
                evaluate_by="site",
                accept_by="federated",
            ),
            actor="test",
        )
        assert wait_done(server, run.id) == "completed", server.store.get_training_run(run.id)  # type: ignore[attr-defined]
        rounds = server.store.list_rounds(run.id)  # type: ignore[attr-defined]
        evaluated = [r.round for r in rounds if r.evaluation.get("devices")]
        assert evaluated == [2, 4, 5]  # every 2nd round and always the final one
        assert all(r.accuracy is not None for r in rounds)  # the server's set beside it
        parent = rounds[0].evaluation["parent"]
        assert parent["of_round"] == 0 and len(parent["devices"]) == 4
        for r in rounds[1:]:
            assert "parent" not in r.evaluation
        for r in (rounds[1], rounds[3], rounds[4]):
            cohorts = r.evaluation["cohorts"]
            assert sorted(cohorts) == ["berlin", "paris"]
            assert [c["devices"] for c in cohorts.values()] == [2, 2]
            assert sum(c["examples"] for c in cohorts.values()) == r.evaluation["examples"]
            berlin = [fleet[0].link.device_id, fleet[1].link.device_id]
            figures = [r.evaluation["devices"][d] for d in berlin]
            hits = sum(f["accuracy"] * f["num-examples"] for f in figures)
            expected = hits / sum(f["num-examples"] for f in figures)
            assert cohorts["berlin"]["accuracy"] == pytest.approx(expected)
        result = server.store.get_training_run(run.id).result  # type: ignore[attr-defined]
        judged = result["federated_acceptance"]
        assert judged["accepted"] is True and judged["devices"] == 4 and judged["of_round"] == 5
        assert judged["accuracy"] > judged["parent_accuracy"]
        assert result["handed_over"] is True and "refused" not in result
        assert handed and all(lineage["federated_acceptance"] == judged for lineage in handed)
    finally:
        for d in fleet:
            d.stop()


def _no_labelled_rows(model: str) -> HeldOutSet:
    """A server with reference rows for calibration but no labelled evaluation data."""
    data = split()
    return HeldOutSet(data.x_test[:0], data.y_test[:0], data.x_train)


def _fixed(rows: np.ndarray, labels: np.ndarray) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    """A device's data source in exactly this order (so its held-out positions are known)."""
    return lambda _width: (rows, labels)


def test_candidate_losing_on_federated_evaluation_is_not_registered(
    server: FleetServer, tmp_path: Path
) -> None:
    """Devices train on labels shifted by one but hold out samples with the true labels:
    the trained model gets worse on them than the parent, so the candidate is refused."""
    handed: list[Path] = []
    server.training.on_candidate = lambda path, lineage: handed.append(path)
    server.training._heldout = _no_labelled_rows  # accept_by auto: federated
    data = split()
    fleet = []
    for i, part in enumerate(dirichlet_parts(data.y_train, 3, alpha=0.5, seed=5)):
        rows, truth = data.x_train[part], data.y_train[part]
        held = np.arange(len(truth)) % 5 == 4  # what the devices hold out (HELDOUT_EVERY)
        labels = np.where(held, truth, (truth + 1) % 10)
        fleet.append(
            make_device(server, tmp_path, f"fr-{i}", rows, labels, data=_fixed(rows, labels))
        )
    wait_for(
        lambda: all(server.store.get_device(d.link.device_id).online for d in fleet),
        what="devices online",
    )
    try:
        run = server.training.start_run(
            spec(rounds=2, min_clients=3, client_evaluate=True), actor="test"
        )
        assert wait_done(server, run.id) == "completed", server.store.get_training_run(run.id)  # type: ignore[attr-defined]
        rounds = server.store.list_rounds(run.id)  # type: ignore[attr-defined]
        assert all(r.accuracy is None for r in rounds)  # no server-side figures to show
        result = server.store.get_training_run(run.id).result  # type: ignore[attr-defined]
        judged = result["federated_acceptance"]
        assert judged["accepted"] is False and judged["accuracy"] < judged["parent_accuracy"]
        assert result["refused"].startswith("candidate not registered: federated accuracy")
        assert result["handed_over"] is False and result["accuracy"] is None and not handed
    finally:
        for d in fleet:
            d.stop()


def test_run_without_server_data_or_client_evaluation_fails_with_the_fix(
    server: FleetServer,
) -> None:
    server.training._heldout = _no_labelled_rows
    run = server.training.start_run(spec(rounds=1), actor="test")
    assert wait_done(server, run.id) == "failed"
    detail = server.store.get_training_run(run.id).detail  # type: ignore[attr-defined]
    assert "no labelled evaluation data" in detail and "--client-evaluate" in detail
