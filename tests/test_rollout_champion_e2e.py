"""The champion/challenger gate end to end: real server, broker, store, REST API and links.

The devices (:class:`LabelledDevice`) send feedback labels with their telemetry,
right as often as the version they run is accurate.  The default plan compares
each wave with the version the devices ran before: a model as accurate as its
parent goes everywhere, one 15 points worse is halted on the canary and rolled
back, and the gate's evidence (labels, the count it asked for) is in the answer.
"""

from __future__ import annotations

from pathlib import Path

from edgefleet_contract.messages import Telemetry

from .harness import wait_for
from .rollout_devices import SimDevice, rollout_fleet

ACCURACY = {"1.0.0": 0.95, "2.0.0": 0.95, "3.0.0": 0.80}
LABELS = 60
"""Labels per telemetry batch (two batches a second)."""


class LabelledDevice(SimDevice):
    """A simulated device whose application sends ground truth back for every answer."""

    def batch(self) -> Telemetry:
        right = sum(self.rng.random() < ACCURACY[self.version] for _ in range(LABELS))
        stats = self.inference(LABELS, 0, 120, feedback_count=LABELS, feedback_correct=right)
        return self.telemetry(stats)


PLAN = {
    "target": "tag:site=e2e",
    "canary": "1",
    "waves": "100%",
    "pace": "600/min",
    "probation": "2s",
}


def test_an_equal_model_passes_its_parent_gate_and_a_worse_one_is_rolled_back(
    tmp_path: Path,
) -> None:
    with rollout_fleet(tmp_path, "cc", 4, LabelledDevice) as fleet:
        server, devices = fleet.server, fleet.devices
        fleet.wait_running("1.0.0")
        api = fleet.api
        v2 = api.post("/rollouts", {**PLAN, "artifact": "digits@2.0.0"})
        assert v2["plan"]["vs_parent"] is True and v2["plan"]["parent_margin"] == 0.05
        done = api.wait_status(v2["id"], {"completed", "halted", "rolled_back"}, timeout=120)
        assert done["status"] == "completed", done
        gate = done["waves"][0]["gates"][-1]
        assert gate["metric"] == "accuracy_vs_parent" and gate["passed"], gate
        assert "digits@1.0.0" in gate["gate"]
        # It waited for labels: the count it asked for, or overwhelming evidence before it.
        assert gate["needed"] > 100 and gate["samples"] > 50
        assert gate["samples"] >= gate["needed"] or "early" in gate["note"], gate
        assert gate["parent_samples"] >= gate["samples"]
        assert gate["low"] > -0.05
        assert all(d.version == "2.0.0" for d in devices)

        v3 = api.post("/rollouts", {**PLAN, "artifact": "digits@3.0.0"})
        back = api.wait_status(v3["id"], {"rolled_back", "completed"}, timeout=120)
        assert back["status"] == "rolled_back", back
        assert "accuracy vs digits@2.0.0" in back["reason"]
        gate = back["waves"][0]["gates"][-1]
        assert gate["metric"] == "accuracy_vs_parent" and not gate["passed"]
        assert gate["high"] < -0.05
        wait_for(lambda: all(d.version == "2.0.0" for d in devices), 30, "all back on v2")
        assert server.rollouts.errors == 0
