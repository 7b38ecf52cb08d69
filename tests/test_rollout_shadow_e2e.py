"""The shadow step end to end: real server, broker, store, REST API and device links.

The devices (:class:`ShadowDevice`) follow the desired state's ``shadow`` field
and, while it names a model, report a shadow section in their telemetry with
the agreement that version has with the active one.  A candidate that agrees
goes out after its shadow step; one that disagrees is stopped before any device
switches to it.
"""

from __future__ import annotations

from pathlib import Path

from edgefleet_contract.messages import DesiredState, LatencySummary, ShadowStats, Telemetry

from .harness import wait_for
from .rollout_devices import SimDevice, rollout_fleet

AGREEMENT = {"2.0.0": 0.98, "3.0.0": 0.5}
ANSWERS = 50


class ShadowDevice(SimDevice):
    """A simulated device that runs the desired state's shadow model beside its own."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.shadowing: str | None = None
        self.ran: set[str] = {self.version}
        """Every version this device has served (the shadow candidate must not be one)."""

    def _update(self, desired: DesiredState) -> None:
        if desired.version > self.applied:
            self.shadowing = desired.shadow.version if desired.shadow is not None else None
        super()._update(desired)
        self.ran.add(self.version)

    def batch(self) -> Telemetry:
        shadow = None
        if (candidate := self.shadowing) is not None:
            agreed = sum(self.rng.random() < AGREEMENT[candidate] for _ in range(ANSWERS))
            shadow = ShadowStats(
                model="digits",
                version=candidate,
                samples=ANSWERS,
                agreed=agreed,
                latency=LatencySummary(p50_ms=2, p95_ms=4, p99_ms=5, max_ms=6, mean_ms=2),
            )
        return self.telemetry(self.inference(ANSWERS, 0, 100), shadow=shadow)


PLAN = {
    "target": "tag:site=e2e",
    "canary": "2",
    "waves": "100%",
    "pace": "600/min",
    "probation": "1s",
    "shadow": "2s",
    "gates": ["shadow_agreement>=0.9", "error_rate<0.05"],
    "vs_parent": False,
}


def test_a_candidate_that_agrees_ships_after_its_shadow_step_and_one_that_does_not_never_switches(
    tmp_path: Path,
) -> None:
    with rollout_fleet(tmp_path, "sh", 4, ShadowDevice) as fleet:
        server, devices, store = fleet.server, fleet.devices, fleet.server.store
        fleet.wait_running("1.0.0")
        api = fleet.api
        v2 = api.post("/rollouts", {**PLAN, "artifact": "digits@2.0.0"})
        assert v2["plan"]["shadow_s"] == 2.0 and v2["shadow"]["state"] in ("waiting", "shadowing")
        wait_for(lambda: sum(d.shadowing == "2.0.0" for d in devices) == 2, 30, "canary shadows")
        assert all(d.version == "1.0.0" for d in devices)  # shadowing: nothing switched
        done = api.wait_status(v2["id"], {"completed", "halted", "rolled_back"}, timeout=120)
        assert done["status"] == "completed", done
        step = done["shadow"]
        assert step["state"] == "passed", step
        gate = step["gates"][0]
        assert gate["metric"] == "shadow_agreement" and gate["passed"]
        assert gate["samples"] >= 20 and 0.9 <= gate["value"] <= 1.0
        assert all(d.version == "2.0.0" and d.shadowing is None for d in devices)

        v3 = api.post("/rollouts", {**PLAN, "artifact": "digits@3.0.0"})
        back = api.wait_status(v3["id"], {"rolled_back", "completed", "halted"}, timeout=120)
        assert back["status"] == "rolled_back", back
        assert "shadow step failed" in back["reason"]
        assert back["shadow"]["state"] == "failed"
        assert back["shadow"]["gates"][0]["value"] < 0.9
        wait_for(lambda: all(d.shadowing is None for d in devices), 30, "shadow runs ended")
        assert all("3.0.0" not in d.ran for d in devices)  # no device ever served it
        assert all(
            (desired := store.get_device(d.id).desired) is None or desired.shadow is None
            for d in devices
        )
        assert server.rollouts.errors == 0
