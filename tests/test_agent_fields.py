"""``carried_over``: settings into policies, counters into messages, every shared field."""

from __future__ import annotations

import dataclasses

import pytest

from agent.config import DriftSettings, UpdateSettings
from agent.drift_monitor import AlertPolicy
from agent.fields import carried_over, field_names
from agent.updates.updater import UpdatePolicy
from edgefleet_contract.messages import ShadowStats


def test_update_settings_become_the_policy_and_the_rest_keep_their_defaults() -> None:
    u = UpdateSettings(probation_s=5, max_restarts=7, max_error_rate=0.5, retry_for_s=9)
    policy = carried_over(UpdatePolicy, u)
    assert (policy.probation_s, policy.max_restarts, policy.max_error_rate) == (5, 7, 0.5)
    assert (policy.min_inferences, policy.retry_for_s) == (u.min_inferences, 9)
    assert policy.poll_s == UpdatePolicy().poll_s


def test_drift_settings_become_the_alert_policy() -> None:
    d = DriftSettings(alpha=0.2, min_effect=0.1, raise_after=4, clear_after=5, burn_in_rows=300)
    assert carried_over(AlertPolicy, d) == AlertPolicy(0.2, 0.1, 4, 5, 300)


def test_given_fields_win_and_fields_only_the_source_has_stay_behind() -> None:
    @dataclasses.dataclass
    class Counts:
        samples: int = 3
        agreed: int = 2
        scratch: float = 1.5

    stats = carried_over(ShadowStats, Counts(), model="m", version="1", agreed=1)
    assert (stats.model, stats.samples, stats.agreed, stats.dropped) == ("m", 3, 1, 0)


def test_only_dataclasses_and_pydantic_models_have_field_names() -> None:
    assert field_names(AlertPolicy)[0] == "alpha"
    with pytest.raises(TypeError):
        field_names(int)
