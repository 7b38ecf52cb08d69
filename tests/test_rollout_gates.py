"""Health gates one function at a time: the result each gives, field by field (what the
engine stores, the console shows and the halt reason quotes)."""

from __future__ import annotations

import math

import pytest

from edgefleet_contract.errors import PlanError
from fleet_server.rollouts.champion import Arm, Pairs, compare, compare_paired
from fleet_server.rollouts.gates import (
    DEPRECATED,
    GateResult,
    evaluate,
    expire,
    failed_text,
    more_needed,
    parse_gate,
    shortfall,
    vs_parent,
    vs_parent_paired,
)

ERRORS = parse_gate("error_rate<0.01")
BASE = ("error_rate<0.01", "error_rate", "<", 0.01)


def test_a_gate_with_enough_samples_is_judged_and_says_what_it_needed() -> None:
    [judged] = evaluate(
        [ERRORS], {"error_rate": 0.005}, {"error_rate": 20}, min_samples=10, allow_no_data=False
    )
    assert judged == GateResult(*BASE, 0.005, True, "", 20, 10, "inferences")
    [at_the_bound] = evaluate(
        [ERRORS], {"error_rate": 0.02}, {"error_rate": 10}, min_samples=10, allow_no_data=False
    )
    assert at_the_bound == GateResult(*BASE, 0.02, False, "", 10, 10, "inferences")


def test_without_a_minimum_one_sample_is_enough() -> None:
    [judged] = evaluate([ERRORS], {"error_rate": 0.0}, {"error_rate": 1}, allow_no_data=False)
    assert judged == GateResult(*BASE, 0.0, True, "", 1, 1, "inferences")


def test_a_plan_that_allows_no_data_needs_no_samples() -> None:
    [judged] = evaluate([ERRORS], {"error_rate": 0.02}, {"error_rate": 3})
    assert judged == GateResult(*BASE, 0.02, False, "", 3, 0, "inferences")
    [empty] = evaluate([ERRORS], {"error_rate": None}, {"error_rate": 0})
    assert empty == GateResult(*BASE, None, True, "no data", 0, 0, "inferences")
    [not_a_number] = evaluate([ERRORS], {"error_rate": math.nan}, {"error_rate": 4})
    assert not_a_number == GateResult(*BASE, None, True, "no data", 4, 0, "inferences")


def test_too_few_samples_wait_with_the_count_in_the_note() -> None:
    [few] = evaluate(
        [ERRORS], {"error_rate": 0.0}, {"error_rate": 3}, min_samples=10, allow_no_data=False
    )
    note = "waiting for data: 3/10 inferences"
    assert few == GateResult(*BASE, 0.0, False, note, 3, 10, "inferences", waiting=True)
    [uncounted] = evaluate([ERRORS], {"error_rate": 0.0}, None, allow_no_data=False)
    note = "waiting for data: 0/1 inferences"
    assert uncounted == GateResult(*BASE, 0.0, False, note, 0, 1, "inferences", waiting=True)


def test_a_gate_that_needs_no_traffic_has_no_sample_count() -> None:
    [judged] = evaluate([parse_gate("crash_loops==0")], {"crash_loops": 0.0}, {"crash_loops": 5})
    assert judged == GateResult("crash_loops==0", "crash_loops", "==", 0.0, 0.0, True, "", None)


def test_a_deprecated_gate_carries_its_note_alone_or_after_another() -> None:
    drift = parse_gate("drift<0.3")
    [judged] = evaluate([drift], {"drift": 0.1}, {"drift": 5})
    assert judged.note == DEPRECATED["drift"] and judged.passed
    [empty] = evaluate([drift], {"drift": None}, {})
    assert empty.note == f"no data; {DEPRECATED['drift']}"


def test_expire_fails_every_waiting_gate_and_says_how_short_it_was() -> None:
    [few] = evaluate(
        [ERRORS], {"error_rate": 0.0}, {"error_rate": 3}, min_samples=10, allow_no_data=False
    )
    [none] = evaluate([ERRORS], {}, {}, min_samples=10, allow_no_data=False)
    [judged] = evaluate([ERRORS], {"error_rate": 0.0}, {"error_rate": 3})
    expired = expire([few, none, judged], "10m")
    assert expired[0] == GateResult(
        *BASE,
        0.0,
        False,
        "too little data: 3 of 10 inferences from the wave within 10m",
        3,
        10,
        "inferences",
    )
    assert expired[1].note == "no data: 0 of 10 inferences from the wave within 10m"
    assert expired[0].passed is False and expired[1].waiting is False
    assert expired[2] is judged


def test_failed_text_names_each_gate_and_why() -> None:
    [measured] = evaluate([ERRORS], {"error_rate": 0.02}, {"error_rate": 3})
    [waited] = expire(evaluate([ERRORS], {}, {}, min_samples=2, allow_no_data=False), "5m")
    assert failed_text([measured, waited]) == (
        "error_rate<0.01 (measured 0.02); "
        "error_rate<0.01 (no data: 0 of 2 inferences from the wave within 5m)"
    )


def test_more_needed_counts_the_larger_side() -> None:
    assert more_needed({"needed": 30, "samples": 12}) == 18
    assert more_needed({"needed": 30, "samples": None}) == 30
    assert more_needed({"needed": 30, "samples": 12, "parent_samples": 5}) == 25
    assert more_needed({"needed": 30, "samples": 5, "parent_samples": 12}) == 25
    assert more_needed({"needed": 30, "samples": 40, "parent_samples": 30}) == 0


def test_shortfall_lists_the_waiting_gates() -> None:
    results = [
        {"gate": "error_rate<0.01", "waiting": True, "samples": 3, "needed": 20,
         "unit": "inferences"},
        {"gate": "accuracy>=0.9", "waiting": False, "samples": 1, "needed": 20,
         "unit": "labelled answers"},
        {"gate": "p95_latency_ms<40", "waiting": True, "samples": None, "needed": 20,
         "unit": "inferences"},
        {"gate": "vs v1", "waiting": True, "samples": 10, "needed": 40,
         "unit": "labelled answers", "parent_samples": 25},
        {"gate": "vs v1 (estimate)", "waiting": True, "samples": 10, "needed": 40,
         "unit": "answers (estimated)", "parent_samples": 50},
    ]  # fmt: skip
    assert shortfall(results) == (
        "error_rate<0.01 3/20 inferences, p95_latency_ms<40 0/20 inferences, "
        "vs v1 10/40 labelled answers (parent 25/40): needs 30 more labels, "
        "vs v1 (estimate) 10/40 answers (estimated) (parent 50/40): needs 30 more answers"
    )


def test_a_gate_of_200_characters_is_the_longest_allowed() -> None:
    assert parse_gate("error_rate<0.01".ljust(200)).source == "error_rate<0.01"
    with pytest.raises(PlanError) as info:
        parse_gate("error_rate<0.01".ljust(201))
    assert str(info.value) == "a gate is longer than 200 characters"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("   ", "the gate is empty; write it as metric OP number, e.g. error_rate<0.01"),
        ("bogus<1", "gate 'bogus<1': expected a metric ({metrics}) at column 1, found 'bogus'"),
        (
            "error_rate<1e999",
            "gate 'error_rate<1e999': expected a finite number at column 12, found '1e999'",
        ),
    ],
)
def test_parse_errors_say_where_and_what(text: str, message: str) -> None:
    from fleet_server.rollouts.gates import METRICS

    with pytest.raises(PlanError) as info:
        parse_gate(text)
    assert str(info.value) == message.format(metrics=", ".join(METRICS))


def test_vs_parent_names_its_margin_and_confidence_and_keeps_the_bounds() -> None:
    new, parent = Arm(950, 1000), Arm(940, 1000)
    got = vs_parent("v1", new, parent, margin=0.02, confidence=0.95)
    c = compare(new, parent, margin=0.02, confidence=0.95)
    assert c.low is not None and c.high is not None and c.difference is not None
    note = f"{c.reason} (difference {c.difference:+.3f}, bounds {c.low:+.3f}..{c.high:+.3f})"
    assert got == GateResult(
        "accuracy vs v1 >= -2pt at 95%", "accuracy_vs_parent", ">=", -0.02, c.difference,
        c.verdict == "pass", note, 1000, c.needed, "labelled answers",
        waiting=c.verdict == "wait", low=c.low, high=c.high, parent_samples=1000,
    )  # fmt: skip
    estimated = vs_parent("v1", new, parent, margin=0.05, confidence=0.9, basis="estimate")
    assert estimated.gate == "accuracy vs v1 >= -5pt at 90% (label-free estimate)"
    assert estimated.unit == "answers (estimated)"


def test_vs_parent_without_parent_labels_passes_with_nothing_to_compare() -> None:
    got = vs_parent("v1", Arm(5, 7), Arm(0, 0), margin=0.02, confidence=0.95)
    note = "v1 has no labelled answers and no trusted estimate in the window: nothing to compare"
    assert got == GateResult(
        "accuracy vs v1 >= -2pt at 95%", "accuracy_vs_parent", ">=", -0.02, None, True, note,
        7, 0, "labelled answers", parent_samples=0,
    )  # fmt: skip


def test_vs_parent_without_new_labels_waits_unless_the_plan_allows_no_data() -> None:
    new, parent = Arm(0, 0), Arm(90, 100)
    allowed = vs_parent("v1", new, parent, margin=0.02, confidence=0.95, allow_no_data=True)
    assert allowed == GateResult(
        "accuracy vs v1 >= -2pt at 95%", "accuracy_vs_parent", ">=", -0.02, None, True,
        "no data", 0, 0, "labelled answers", parent_samples=100,
    )  # fmt: skip
    waiting = vs_parent("v1", new, parent, margin=0.02, confidence=0.95)
    assert (
        waiting.waiting
        and not waiting.passed
        and waiting.note == "no labels from the new version yet"
    )
    some = vs_parent("v1", Arm(3, 3), parent, margin=0.02, confidence=0.95, allow_no_data=True)
    assert some.waiting and some.samples == 3  # labels, however few, are judged


def test_vs_parent_paired_is_judged_on_the_shadow_pairs() -> None:
    pairs = Pairs(labelled=400, new_correct=380, parent_correct=378, discordant=10)
    got = vs_parent_paired("v1", pairs, margin=0.02, confidence=0.95)
    c = compare_paired(pairs, margin=0.02, confidence=0.95)
    assert got.gate == "accuracy vs v1 >= -2pt at 95% (paired, shadow run)"
    assert (got.op, got.threshold, got.value) == (">=", -0.02, c.difference)
    assert (got.unit, got.samples, got.parent_samples) == ("labelled shadow answers", 400, 400)


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ("<", (True, False, False)),
        ("<=", (True, True, False)),
        (">", (False, False, True)),
        (">=", (False, True, True)),
        ("==", (False, True, False)),
        ("=", (False, True, False)),
        ("!=", (True, False, True)),
    ],
)
def test_each_comparison_below_at_and_above_its_threshold(
    op: str, expected: tuple[bool, bool, bool]
) -> None:
    gate = parse_gate(f"error_rate{op}0.5")
    assert (gate.holds(0.4), gate.holds(0.5), gate.holds(0.6)) == expected
