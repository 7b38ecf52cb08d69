"""Shadow runs on the shipped packages: the candidate is compared, never answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.serving import ModelService
from agent.shadow import ShadowRunner
from edgefleet_contract.messages import Telemetry

DIST = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models"
ACTIVE = DIST / "digits-1.0.0-onnx-int8.efpkg"
CANDIDATE = DIST / "digits-1.0.0-onnx-float32.efpkg"


def _holdout(n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(Path(__file__).with_name("data") / "digits_holdout.npz")
    return data["x"][:n].astype(np.float32), data["y"][:n]


def _service() -> ModelService:
    service = ModelService(recorder=None)
    service.replace(ACTIVE)
    return service


def test_active_answer_unchanged_and_agreement_counted() -> None:
    x, _ = _holdout()
    plain = _service()
    shadowed = _service()
    candidate = shadowed.load(CANDIDATE)
    runner = shadowed.start_shadow(candidate)
    answers = [shadowed.predict(row).classes.item(0) for row in x]
    expected = [plain.predict(row).classes.item(0) for row in x]
    assert answers == expected  # what the app gets is the active model's answer
    runner.idle()
    stats = shadowed.shadow_snapshot()
    assert stats is not None
    own = candidate.predict(x).classes.tolist()
    assert stats.samples == len(x)
    assert stats.agreed == sum(a == b for a, b in zip(own, answers, strict=True))
    assert stats.dropped == 0 and stats.errors == 0
    assert stats.latency is not None and stats.latency.max_ms >= stats.latency.p50_ms > 0
    assert (stats.model, stats.version) == ("digits", "1.0.0")
    # The window restarts after each snapshot.
    again = runner.snapshot()
    assert again.samples == 0 and again.latency is None
    shadowed.stop_shadow()


def test_labels_score_both_models() -> None:
    x, y = _holdout(80)
    service = _service()
    candidate = service.load(CANDIDATE)
    runner = service.start_shadow(candidate)
    prediction, ids = service.predict_tracked(x)
    runner.idle()
    active_right = 0
    for pid, label in zip(ids, y.tolist(), strict=True):
        active_right += service.feedback(pid, int(label))
    stats = runner.snapshot()
    own = candidate.predict(x).classes
    assert stats.labelled == len(x)
    assert stats.active_correct == active_right == int((prediction.classes == y).sum())
    assert stats.candidate_correct == int((own == y).sum())
    assert stats.discordant == int(((own == y) != (prediction.classes == y)).sum())
    service.stop_shadow()


def test_the_infer_entry_point_is_shadowed_too() -> None:
    """``/v1/infer`` (``ModelService.infer``) feeds the shadow run like ``/v1/predict``:
    agreement, and labels for both models through the ids it returns."""
    x, y = _holdout(60)
    service = _service()
    candidate = service.load(CANDIDATE)
    runner = service.start_shadow(candidate)
    result, _ = service.infer(x)
    assert result.classes is not None
    ids = [str(a["id"]) for a in result.results]
    runner.idle()
    for pid, label in zip(ids, y.tolist(), strict=True):
        service.feedback(pid, int(label))
    stats = runner.snapshot()
    own = candidate.predict(x).classes
    assert stats.samples == len(x) and stats.errors == 0
    assert stats.agreed == int((own == result.classes).sum())
    assert stats.labelled == len(x)
    assert stats.candidate_correct == int((own == y).sum())
    assert stats.active_correct == int((result.classes == y).sum())
    service.stop_shadow()


def test_full_queue_drops_and_counts_without_blocking() -> None:
    service = _service()
    candidate = service.load(CANDIDATE)
    runner = ShadowRunner(candidate, capacity=2)  # not started: nothing drains the queue
    x, _ = _holdout(5)
    assert runner.offer(x[:1], [0])
    assert runner.offer(x[1:3], [0, 1])
    assert not runner.offer(x[3:5], [2, 3])
    assert runner.snapshot().dropped == 2
    runner.start()
    runner.idle()
    stats = runner.snapshot()
    assert stats.samples == 3 and stats.dropped == 0
    runner.stop()


def test_candidate_failure_is_counted_not_raised() -> None:
    service = _service()
    runner = ShadowRunner(service.load(CANDIDATE)).start()
    runner.offer(np.zeros((2, 7), dtype=np.float32), [0, 0])  # wrong feature count
    runner.idle()
    stats = runner.snapshot()
    assert stats.errors == 2 and stats.samples == 0
    runner.stop()


def test_telemetry_shadow_section_is_optional() -> None:
    base = {
        "device_id": "dev-1",
        "batch_id": "b1",
        "seq": 1,
        "ts": 1.0,
        "window_s": 10.0,
    }
    assert Telemetry.model_validate(base).shadow is None  # an older agent's batch
    sent = Telemetry.model_validate(
        {**base, "shadow": {"model": "digits", "version": "2.0.0", "samples": 5, "agreed": 4}}
    )
    assert sent.shadow is not None and sent.shadow.agreed == 4
