"""PlanSpec: the rollout plan's one vocabulary, its one-string parser and its errors.

The CLI's options, the API's request, a training run's ``--rollout`` and the
console's defaults all come from the one model; a bad value is a PlanError naming
the option at fault, whichever way it came in.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgefleet_contract.errors import PlanError
from fleet_server.federation.spec import RunSpec
from fleet_server.fleetctl.cmd_rollouts import create
from fleet_server.rollouts.artifacts import ResolvedArtifact
from fleet_server.rollouts.plan import FLAGS, WORDS, PlanSpec, build_plan, option_word, plan_error

ARTIFACT = ResolvedArtifact("model", "digits", "1.3.0", "models/digits/1.3.0/x.efpkg", "a" * 64, 9)


def test_one_string_and_the_fields_say_the_same_plan() -> None:
    parsed = PlanSpec.parse(
        "canary 10%; waves 50% 100%, gate error_rate<0.1 gate accuracy >= 0.9 "
        "no-auto-rollback max-failures 3 shadow 30m gate-min-samples 50",
        target="tag:site=lab",
    )
    given = PlanSpec(
        target="tag:site=lab",
        canary="10%",
        waves="50%,100%",
        gates=["error_rate<0.1", "accuracy>=0.9"],
        auto_rollback=False,
        max_failures=3,
        shadow="30m",
        gate_min_samples=50,
    )
    assert parsed == given
    plan = build_plan(parsed, ARTIFACT, seed=7)
    assert (plan.waves, plan.max_failures, plan.shadow_s, plan.seed) == ((0.5, 1.0), 3, 1800.0, 7)
    assert not plan.auto_rollback and plan.artifact == ARTIFACT
    # The defaults are one set: an empty spec builds the plan a bare `rollout create` gets.
    bare = build_plan(PlanSpec(target="all"), ARTIFACT, seed=0)
    assert (bare.canary.count, bare.waves, bare.pace_per_min, bare.probation_s) == (
        1,
        (1.0,),
        60.0,
        600.0,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"canary": "some"}, "--canary 'some': use a device count (5) or a percentage (5%)"),
        ({"waves": "50%,40%"}, "--waves item 2 '40%': waves are cumulative"),
        ({"pace": "fast"}, "--pace 'fast': use devices per time"),
        ({"probation": "a while"}, "--probation 'a while': use a duration"),
        ({"device_timeout": "1y"}, "--device-timeout '1y': use a duration"),
        ({"parent_margin": "5%"}, "--parent-margin '5%': use accuracy points"),
        ({"gates": ["accuracy>=x"]}, "accuracy>=x"),
    ],
)
def test_a_bad_value_names_its_option(fields: dict[str, object], message: str) -> None:
    spec = PlanSpec.model_validate({"target": "all", **fields})
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec.check()
    assert PlanSpec(target="all").check() is None  # the positive control: the defaults parse


def test_a_value_of_the_wrong_shape_names_the_option() -> None:
    with pytest.raises(ValidationError) as caught:
        PlanSpec.model_validate({"target": "all", "gate_min_samples": 0})
    assert str(plan_error(caught.value)) == "gate-min-samples is from 1 to 1000000, not 0"
    with pytest.raises(ValidationError) as caught:
        PlanSpec.model_validate({"target": "all", "canary": ""})
    assert str(plan_error(caught.value)).startswith("canary: String should have at least 1")
    with pytest.raises(PlanError, match="--rollout: max-failures is from 0 to 1000000"):
        PlanSpec.parse("max-failures 2000000", target="all")
    assert PlanSpec.parse("max-failures 1000000", target="all").max_failures == 1_000_000


def test_the_cli_options_and_the_words_are_the_specs_fields() -> None:
    options = {p.name: p for p in create.params}
    assert set(options) == {"artifact", *PlanSpec.model_fields}
    for name, info in PlanSpec.model_fields.items():
        if name == "target":
            continue
        assert options[name].opts == [f"--{option_word(name)}"], name
        if name not in FLAGS and name not in ("gates", "seed"):
            assert options[name].default == info.default, name
    assert set(WORDS.values()) == set(PlanSpec.model_fields) - {"target", "seed"}
    assert {option_word(n) for n in FLAGS} == {
        "no-auto-rollback",
        "gates-allow-no-data",
        "no-parent-gate",
    }


def test_a_training_run_holds_its_rollout_parsed() -> None:
    run = RunSpec(target="tag:fl=x", rollout="canary 1, waves 100%, no-parent-gate")
    assert run.release == PlanSpec(target="tag:fl=x", canary="1", vs_parent=False)
    assert run.rollout == "canary 1, waves 100%, no-parent-gate"  # as written, for the record
    assert RunSpec(target="all").release is None
    again = RunSpec.model_validate(run.model_dump(mode="json"))  # a run read back from the store
    assert again.release == run.release
    with pytest.raises(PlanError, match="waves are percentages"):
        RunSpec(target="all", rollout="canary 10%, waves 50 100")
