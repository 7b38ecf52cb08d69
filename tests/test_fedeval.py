"""The federated verdict: same devices only, strict without a margin, bounded with one."""

from __future__ import annotations

from fleet_server.federation.fedeval import summarise, verdict


def _round(figures: dict[str, tuple[float, float]], of_round: int) -> dict[str, object]:
    return summarise(
        {d: {"accuracy": a, "num-examples": n} for d, (a, n) in figures.items()}, of_round
    )


def test_only_devices_that_evaluated_both_count() -> None:
    parent = _round({"a": (0.5, 10), "b": (0.9, 30)}, 0)
    final = _round({"a": (0.6, 10), "c": (0.1, 500)}, 3)
    judged = verdict(parent, final, 0.0)
    assert judged["devices"] == 1 and judged["examples"] == 10
    assert judged["accepted"] is True and judged["accuracy"] == 0.6


def test_a_tie_is_refused_without_a_margin_and_a_small_loss_passes_with_one() -> None:
    parent = _round({"a": (0.8, 20)}, 0)
    assert verdict(parent, _round({"a": (0.8, 20)}, 2), 0.0)["accepted"] is False
    slightly_worse = _round({"a": (0.75, 20)}, 2)
    assert verdict(parent, slightly_worse, 0.1)["accepted"] is True
    refused = verdict(parent, slightly_worse, 0.01)
    assert refused["accepted"] is False and "needed at least 0.7900" in refused["reason"]


def test_no_common_device_is_a_refusal_with_a_reason() -> None:
    judged = verdict(_round({"a": (0.5, 5)}, 0), _round({"b": (0.9, 5)}, 1), 0.0)
    assert judged["accepted"] is False and "no device evaluated both" in judged["reason"]


def test_cohorts_weight_their_devices_by_samples() -> None:
    figures = {
        "a": {"accuracy": 1.0, "num-examples": 30.0},
        "b": {"accuracy": 0.0, "num-examples": 10.0},
    }
    out = summarise(figures, 4, lambda d: "x")
    assert out["cohorts"] == {"x": {"accuracy": 0.75, "examples": 40.0, "devices": 2}}
