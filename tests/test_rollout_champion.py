"""The champion/challenger gate: its interval, the labels it asks for, and the engine's use."""

from __future__ import annotations

import numpy as np
import pytest

from fleet_server.rollouts.champion import Arm, compare, labels_needed, newcombe, wilson, z_of
from fleet_server.rollouts.engine import Candidate, Rollout, champion_of
from fleet_server.rollouts.gates import shortfall
from fleet_server.rollouts.model import EvaluateGates

from .rollout_sim import ARTIFACT, make, plan


def test_wilson_and_newcombe_match_the_published_examples() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, table II: 56/70 vs 48/80, 95%.
    d, low, high = newcombe(Arm(56, 70), Arm(48, 80), z_of(0.975))
    assert d == pytest.approx(0.2)
    assert low == pytest.approx(0.0524, abs=5e-4) and high == pytest.approx(0.3339, abs=5e-4)
    # Wilson at 0 of 10: the upper bound is 0.2775, not the Wald interval's 0.
    low0, high0 = wilson(0, 10, z_of(0.975))
    assert low0 == pytest.approx(0.0, abs=1e-12) and high0 == pytest.approx(0.2775, abs=5e-4)


def test_the_lower_bound_covers_the_true_difference_at_its_confidence() -> None:
    rng = np.random.default_rng(7)
    z = z_of(0.95)
    misses = 0
    trials = 4000
    for _ in range(trials):
        new = Arm(int(rng.binomial(60, 0.93)), 60)
        parent = Arm(int(rng.binomial(200, 0.95)), 200)
        _, low, _ = newcombe(new, parent, z)
        misses += low > 0.93 - 0.95
    assert misses / trials <= 0.06  # one-sided 95%: about 5% of bounds above the truth


def test_labels_needed_is_the_non_inferiority_sample_size() -> None:
    # (2 * 1.645)^2 * 2 * 0.95 * 0.05 / 0.05^2 = 411 at a parent right 95% of the time.
    assert labels_needed(Arm(9500, 10_000), 0.05, 0.95) == pytest.approx(411, abs=3)
    # A tighter margin costs the square: 2 points need about 6.25 times as many.
    assert labels_needed(Arm(9500, 10_000), 0.02, 0.95) == pytest.approx(2570, abs=15)
    # A parent right on its only three labels does not make the count collapse.
    assert labels_needed(Arm(3, 3), 0.05, 0.95) > 400


def test_compare_waits_then_passes_an_equal_model_and_fails_a_worse_one() -> None:
    parent = Arm(4750, 5000)
    few = compare(Arm(19, 20), parent, margin=0.05, confidence=0.95)
    assert few.verdict == "wait" and few.needed > 20
    equal = compare(Arm(950, 1000), parent, margin=0.05, confidence=0.95)
    assert equal.verdict == "pass" and equal.low is not None and equal.low > -0.05
    worse = compare(Arm(850, 1000), parent, margin=0.05, confidence=0.95)
    assert worse.verdict == "fail" and worse.high is not None and worse.high < -0.05


def test_a_clearly_worse_challenger_fails_before_it_has_all_its_labels() -> None:
    c = compare(Arm(30, 60), Arm(950, 1000), margin=0.05, confidence=0.95)
    assert c.verdict == "fail" and c.needed > 60
    assert "clearly" in c.reason


def test_a_clearly_better_challenger_passes_early_and_an_equal_one_waits() -> None:
    better = compare(Arm(58, 60), Arm(690, 1000), margin=0.05, confidence=0.95)
    assert better.verdict == "pass" and better.needed > 60 and "early" in better.reason
    equal = compare(Arm(57, 60), Arm(950, 1000), margin=0.05, confidence=0.95)
    assert equal.verdict == "wait"


def test_a_borderline_challenger_with_all_its_labels_fails() -> None:
    c = compare(Arm(905, 1000), Arm(950, 1000), margin=0.05, confidence=0.95)
    assert c.verdict == "fail" and "cannot show" in c.reason


def test_the_parent_is_what_most_devices_run_of_the_same_model() -> None:
    p = plan()
    cands = [
        Candidate("a", True, "digits@1.2.0"),
        Candidate("b", True, "digits@1.2.0"),
        Candidate("c", True, "digits@1.1.0"),
        Candidate("d", True, ARTIFACT.label),
        Candidate("e", True, "other@9"),
    ]
    assert champion_of(p, cands) == "digits@1.2.0"
    assert champion_of(p, [Candidate("x", True, None)]) is None
    r = Rollout.create("r-1", p, cands, now=0.0, actor="t")
    assert r.state.parent == "digits@1.2.0"


def _labels(accuracy: float, per_s: float, seed: int = 1):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)

    def labels(a: EvaluateGates) -> tuple[Arm, Arm]:
        n = int(per_s * (a.until - a.since))
        return Arm(int(rng.binomial(n, accuracy)), n), Arm(int(rng.binomial(5000, 0.95)), 5000)

    return labels


def test_a_worse_model_is_halted_by_the_parent_gate() -> None:
    sim = make(20, running="digits@1.2.0")
    sim.labels = _labels(0.85, 5.0)
    sim.run(1200)
    r = sim.rollout
    assert r.status == "rolled_back", r.state.reason
    assert "accuracy vs digits@1.2.0" in r.state.reason
    result = r.state.gate_results["0"][-1]
    assert result["metric"] == "accuracy_vs_parent" and result["passed"] is False


def test_an_equal_model_waits_for_the_labels_it_asked_for_then_passes() -> None:
    sim = make(20, running="digits@1.2.0", gate_timeout_s=7200.0)
    sim.labels = _labels(0.95, 1.0)
    sim.run(100)
    r = sim.rollout
    waiting = r.state.gate_results["0"][-1]
    assert waiting["waiting"] and waiting["needed"] > waiting["samples"]
    assert "needs" in shortfall(r.state.gate_results["0"]) and "more labels" in shortfall(
        r.state.gate_results["0"]
    )
    assert any(n.kind == "gates_waiting" for n in sim.notes)
    sim.run(3000)
    assert r.status == "completed", r.state.reason
    final = r.state.gate_results["0"][-1]
    assert final["passed"], final
    # Judged at the count it asked for, or before it on overwhelming evidence.
    assert final["samples"] >= final["needed"] or "early" in final["note"]


def test_a_slow_trickle_of_labels_is_waited_for_past_the_gate_timeout() -> None:
    """At 0.2 labels/s the canary needs about half an hour for the labels it asked for:
    far past a one-minute gate timeout.  It keeps waiting while they keep coming, says how
    many more it needs, and judges an equal model when they are there."""
    sim = make(20, running="digits@1.2.0", gate_timeout_s=60.0)
    sim.labels = _labels(0.95, 0.2)
    sim.run(600)
    r = sim.rollout
    assert r.status == "canary", r.state.reason
    assert "more labels" in shortfall(r.state.gate_results["0"])
    deadline = r.gates_deadline
    assert deadline is not None and deadline > 600 - 120  # pushed on by the last label
    sim.run(4000)
    assert r.status == "completed", r.state.reason


def _stopping(accuracy: float, per_s: float, stop_s: float):  # type: ignore[no-untyped-def]
    """Labels at ``per_s`` until ``stop_s`` seconds into the rollout, then none."""
    rng = np.random.default_rng(2)

    def labels(a: EvaluateGates) -> tuple[Arm, Arm]:
        n = max(0, int(per_s * (min(a.until, stop_s) - a.since)))
        return Arm(int(rng.binomial(n, accuracy)), n), Arm(int(rng.binomial(5000, 0.95)), 5000)

    return labels


def test_a_challenger_whose_labels_stopped_fails_at_the_gate_timeout() -> None:
    sim = make(20, running="digits@1.2.0", gate_timeout_s=60.0)
    sim.labels = _stopping(0.95, 0.2, stop_s=1000.0 + 300.0)  # the clock starts at 1000
    sim.run(900)
    r = sim.rollout
    assert r.status == "rolled_back"
    assert "too little data" in r.state.reason


def test_without_parent_labels_the_gate_passes_and_says_why() -> None:
    sim = make(4, running="digits@1.2.0")
    sim.labels = lambda a: (Arm(0, 0), Arm(0, 0))
    sim.run(600)
    r = sim.rollout
    assert r.status == "completed"
    note = r.state.gate_results["0"][-1]["note"]
    assert "no labelled answers" in note


def test_no_parent_gate_when_the_plan_turns_it_off() -> None:
    sim = make(4, running="digits@1.2.0", vs_parent=False)
    sim.labels = _labels(0.5, 5.0)
    sim.run(600)
    assert sim.rollout.status == "completed"
    assert all(g["metric"] != "accuracy_vs_parent" for g in sim.rollout.state.gate_results["0"])


def _estimates(new: float, parent: float | None, per_s: float):  # type: ignore[no-untyped-def]
    def figures(a: EvaluateGates) -> tuple[dict[str, float | None], dict[str, int]]:
        n = int(per_s * (a.until - a.since))
        values = {"accuracy_estimate": new if n else None, "parent_accuracy_estimate": parent}
        return values, {"accuracy_estimate": n, "parent_accuracy_estimate": 50_000}

    return figures


def test_without_labels_the_gate_compares_the_label_free_estimates() -> None:
    worse = make(20, running="digits@1.2.0")
    worse.figures = _estimates(0.80, 0.95, 5.0)
    worse.run(1200)
    assert worse.rollout.status == "rolled_back"
    result = worse.rollout.state.gate_results["0"][-1]
    assert "label-free estimate" in result["gate"] and result["unit"] == "answers (estimated)"
    equal = make(20, running="digits@1.2.0")
    equal.figures = _estimates(0.95, 0.95, 5.0)
    equal.run(1200)
    assert equal.rollout.status == "completed"
    assert "label-free" in equal.rollout.state.gate_results["0"][-1]["gate"]


def test_an_untrusted_parent_estimate_leaves_nothing_to_compare() -> None:
    sim = make(4, running="digits@1.2.0")
    sim.figures = _estimates(0.2, None, 5.0)  # the parent's estimate was not trusted
    sim.run(600)
    assert sim.rollout.status == "completed"
    assert "no trusted estimate" in sim.rollout.state.gate_results["0"][-1]["note"]


def test_the_paired_bound_covers_the_true_difference_and_needs_far_fewer_labels() -> None:
    from fleet_server.rollouts.champion import Pairs, compare_paired, paired_bounds

    rng = np.random.default_rng(11)
    z = z_of(0.95)
    misses, trials = 0, 4000
    # New right and parent wrong on 1%, the reverse on 3%: the truth is -2 points.
    for _ in range(trials):
        b, c, _ = rng.multinomial(150, [0.01, 0.03, 0.96])
        pairs = Pairs(150, 100 + b, 100 + c, b + c)
        _, low, _ = paired_bounds(pairs, z)
        misses += low > -0.02
    assert misses / trials <= 0.06
    equal = Pairs(150, 142, 142, 2)
    verdict = compare_paired(equal, margin=0.05, confidence=0.95)
    assert verdict.verdict == "pass" and verdict.needed < 150
    assert labels_needed(Arm(95, 100), 0.05, 0.95) > 300  # the unpaired test's count
    worse = Pairs(600, 510, 570, 70)
    assert compare_paired(worse, margin=0.05, confidence=0.95).verdict == "fail"
    assert compare_paired(Pairs(10, 9, 9, 3), margin=0.05, confidence=0.95).reason.startswith(
        "inconsistent"
    )
    assert compare_paired(Pairs(0, 0, 0, 0), margin=0.05, confidence=0.95).verdict == "wait"
