"""Rollout plan options and the gate language: parsing, errors with columns, evaluation."""

from __future__ import annotations

import pytest

from edgefleet_contract.errors import PlanError
from fleet_server.rollouts.gates import evaluate, parse_gate
from fleet_server.rollouts.plan import (
    Share,
    parse_duration,
    parse_pace,
    parse_share,
    parse_waves,
)

from .rollout_sim import plan


def test_gates_parse() -> None:
    g = parse_gate(" p95_latency_ms <= 40 ")
    assert (g.metric, g.op, g.threshold, g.source) == (
        "p95_latency_ms",
        "<=",
        40.0,
        "p95_latency_ms <= 40",
    )
    assert parse_gate("crash_loops=0").op == "=="
    assert parse_gate("accuracy>=.95").threshold == 0.95
    assert parse_gate("error_rate<1e-2").threshold == 0.01


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the gate is empty"),
        ("latency<40", "expected a metric (error_rate, p95_latency_ms"),
        ("error_rate 0.01", "expected a comparison (<= >= == != < >) at column 12, found '0.01'"),
        ("error_rate<", "expected a number at column 12, found the end"),
        ("error_rate<abc", "expected a number at column 12, found 'abc'"),
        ("error_rate<0.1 and", "expected the end at column 16, found 'and'"),
        ("error_rate<0.1)", "expected the end at column 15, found ')'"),
    ],
)
def test_gate_errors_name_the_column(text: str, message: str) -> None:
    with pytest.raises(PlanError) as err:
        parse_gate(text)
    assert message in str(err.value)


def test_evaluate_gates() -> None:
    gates = [parse_gate("error_rate<0.01"), parse_gate("accuracy>=0.9"), parse_gate("drift_js<0.3")]
    out = evaluate(gates, {"error_rate": 0.02, "accuracy": 0.95, "drift_js": None})
    assert [r.passed for r in out] == [False, True, True]
    assert out[0].value == 0.02 and out[2].note == "no data"


def test_each_drift_statistic_has_its_own_gate_and_the_old_name_says_it_is_deprecated() -> None:
    gates = [parse_gate(g) for g in ("drift_js<0.3", "drift_psi<0.25", "drift<0.25")]
    values = {"drift_js": 0.2, "drift_psi": 0.4, "drift": 0.4}
    counts = {"drift_js": 400, "drift_psi": 200, "drift": 600}
    js, psi, old = evaluate(gates, values, counts, min_samples=20, allow_no_data=False)
    assert (js.passed, psi.passed, old.passed) == (True, False, False)
    assert js.note == "" and psi.note == ""
    assert "deprecated" in old.note and "drift_js or drift_psi" in old.note
    (waiting,) = evaluate([gates[2]], {"drift": None}, {}, min_samples=20, allow_no_data=False)
    assert (
        waiting.waiting
        and waiting.note.startswith("waiting for data")
        and "deprecated" in waiting.note
    )


def test_plan_options() -> None:
    assert parse_share("5%") == Share(fraction=0.05)
    assert parse_share("3") == Share(count=3)
    assert Share(fraction=0.05).of(10) == 1  # at least one device when the share is positive
    assert Share(fraction=0.0).of(10) == 0
    assert Share(count=50).of(10) == 10
    assert parse_waves("25%, 50%,100%") == (0.25, 0.5, 1.0)
    assert parse_pace("200/min") == 200.0
    assert parse_pace("5/s") == 300.0
    assert parse_pace("600/h") == 10.0
    assert parse_duration("10m", what="--probation") == 600.0
    assert parse_duration("30", what="--jitter") == 30.0
    assert plan(canary=Share(fraction=0.05)).wave_ends(100) == [5, 25, 50, 100]
    assert plan(canary=Share(count=30)).wave_ends(100) == [30, 30, 50, 100]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: parse_share("five"), "use a device count (5) or a percentage (5%)"),
        (lambda: parse_share("150%"), "between 0% and 100%"),
        (lambda: parse_waves("50%,25%,100%"), "each must be larger than the one before"),
        (lambda: parse_waves("25%,50%"), "must end at 100%"),
        (lambda: parse_waves("3,100%"), "waves are percentages"),
        (lambda: parse_pace("fast"), "like 200/min"),
        (lambda: parse_pace("0/min"), "above zero"),
        (lambda: parse_duration("10 minutes", what="--probation"), "--probation '10 minutes'"),
    ],
)
def test_plan_errors(call: object, message: str) -> None:
    with pytest.raises(PlanError) as err:
        call()  # type: ignore[operator]
    assert message in str(err.value)


def test_plan_round_trips_through_json() -> None:
    p = plan(canary=Share(fraction=0.05), jitter_s=30.0)
    from fleet_server.rollouts.plan import RolloutPlan

    assert RolloutPlan.from_json(p.to_json()) == p
